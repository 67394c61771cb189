"""`QuantKVCache`: a low-bit KV cache with quantize-on-append (KIVI by default, MiKV's mixed
precision as an option). Attention over it is `lowbitc.ops.attention_decode` (docs/kv.md)."""

from __future__ import annotations

import numpy as np

from lowbitc.errors import UserArgumentError
from lowbitc.kv.store import PackedStore, lookup

_F32 = np.float32


def _positive(value: object, arg: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserArgumentError(f"{arg}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def _as_array(x: object, arg: str) -> np.ndarray:
    """A float32 numpy array from a numpy array or a (CPU) torch tensor."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().float().numpy()
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise UserArgumentError(f"{arg}: expected a float array or tensor, got "
                                f"{getattr(x, 'dtype', type(x).__name__)}")
    return x.astype(_F32, copy=False)


class QuantKVCache:
    """Keys and values of `num_heads` key/value heads of `head_dim` channels (times `batch`
    sequences of equal length), stored in `dtype_k` / `dtype_v` (any 1..8-bit formats).

    KIVI's scheme: keys quantized per channel over groups of `group` tokens, values per token
    over groups of `group_v` channels (default min(group, head_dim)); the newest `residual`
    tokens (plus the up to group - 1 that do not fill a group yet) stay in float32.
    With `important_dtype_k` / `important_dtype_v` (MiKV), tokens leaving that window are
    ranked by the attention they accumulated (`ops.attention_decode` adds it up, `append`
    takes it for a prompt) and the top `important_fraction` of them are kept at those formats.
    """

    def __init__(self, num_heads: int, head_dim: int, dtype_k="u4", dtype_v="u4",
                 group: int = 32, group_v: int | None = None, residual: int = 128,
                 batch: int = 1, important_dtype_k=None, important_dtype_v=None,
                 important_fraction: float = 0.2, backend: str = "llvm"):
        self.num_heads = _positive(num_heads, "num_heads")
        self.head_dim = _positive(head_dim, "head_dim")
        self.batch = _positive(batch, "batch")
        self.group = _positive(group, "group")
        self.group_v = _positive(min(group, head_dim) if group_v is None else group_v, "group_v")
        if self.head_dim % self.group_v:
            raise UserArgumentError(f"group_v: expected a divisor of head_dim = {head_dim}, "
                                    f"got {self.group_v}")
        self.residual = _positive(residual, "residual", 0)
        if backend not in ("llvm", "cuda"):
            raise UserArgumentError(f"backend: expected 'llvm' or 'cuda', got {backend!r}")
        self.backend = backend
        self.formats = {"low": (lookup(dtype_k, "dtype_k"), lookup(dtype_v, "dtype_v"))}
        if (important_dtype_k is None) != (important_dtype_v is None):
            raise UserArgumentError("important_dtype_k, important_dtype_v: give both (MiKV) or "
                                    "neither")
        if important_dtype_k is not None:
            self.formats["high"] = (lookup(important_dtype_k, "important_dtype_k"),
                                    lookup(important_dtype_v, "important_dtype_v"))
            if not 0.0 < important_fraction <= 1.0:
                raise UserArgumentError(f"important_fraction: expected a number in (0, 1], got "
                                        f"{important_fraction!r}")
        self.important_fraction = float(important_fraction)
        self.heads = self.batch * self.num_heads  # the kernels' head axis: (sequence, head)
        self.stores: list[PackedStore] = []
        self._active: dict[str, PackedStore] = {}
        shape = (self.heads, 0, self.head_dim)
        # f32 tokens, head-major as the pages: the window (newest last) and, for MiKV, each
        # class's partial group
        self._window = [np.zeros(shape, _F32), np.zeros(shape, _F32)]
        self._score = np.zeros(0, _F32)
        self._pos = np.zeros(0, np.int64)
        self._staged = {c: (np.zeros(shape, _F32), np.zeros(shape, _F32), np.zeros(0, np.int64))
                        for c in self.formats if self.mixed}
        self._store_pos: dict[int, list[np.ndarray]] = {}
        self.length = 0

    @property
    def mixed(self) -> bool:
        return "high" in self.formats

    # ------------------------------------------------------------------ appending
    def _tokens(self, x: object, arg: str) -> np.ndarray:
        """[tokens, heads, dim] (or [batch, tokens, heads, dim]) -> [batch*heads, tokens, dim]."""
        a = _as_array(x, arg)
        want = (self.num_heads, self.head_dim)
        if self.batch == 1 and a.ndim == 3 and a.shape[1:] == want:
            return a.transpose(1, 0, 2)
        if a.ndim == 4 and a.shape[0] == self.batch and a.shape[2:] == want:
            return a.transpose(0, 2, 1, 3).reshape(self.heads, a.shape[1], self.head_dim)
        shape = (f"[tokens, {want[0]}, {want[1]}]" if self.batch == 1
                 else f"[{self.batch}, tokens, {want[0]}, {want[1]}]")
        raise UserArgumentError(f"{arg}: expected shape {shape}, got {a.shape}")

    def append(self, K, V, importance=None) -> None:
        """Add tokens (a whole prompt or one new token): K, V [tokens, heads, head_dim].
        `importance` [tokens] (MiKV): attention the prompt's tokens received, if known."""
        k, v = self._tokens(K, "K"), self._tokens(V, "V")
        if k.shape != v.shape:
            raise UserArgumentError(f"V: expected the shape of K {K.shape}, got {V.shape}")
        t = k.shape[1]
        score = np.zeros(t, _F32)
        if importance is not None:
            score = _as_array(importance, "importance").reshape(-1)
            if score.shape != (t,):
                raise UserArgumentError(f"importance: expected shape ({t},), got {score.shape}")
        self._window = [np.concatenate([w, x], axis=1) for w, x in zip(self._window, (k, v))]
        self._score = np.concatenate([self._score, score])
        self._pos = np.concatenate([self._pos, np.arange(self.length, self.length + t)])
        self.length += t
        leaving = len(self._pos) - self.residual
        if leaving >= self.group:
            self._retire(leaving // self.group * self.group)

    def flush(self) -> None:
        """Quantize every float32 token now (an encoder's prompt, the end of a prefill): the
        last key groups are padded, and later tokens go to new pages."""
        self._retire(len(self._pos), pad=True)

    def _retire(self, count: int, pad: bool = False) -> None:
        """The oldest `count` window tokens go to the packed pages."""
        k, v = (w[:, :count] for w in self._window)
        score, pos = self._score[:count], self._pos[:count]
        self._window = [np.ascontiguousarray(w[:, count:]) for w in self._window]
        self._score, self._pos = self._score[count:].copy(), self._pos[count:].copy()
        if not self.mixed:
            self._quantize("low", k, v, pos, pad)
            return
        high = np.zeros(count, bool)
        top = int(np.ceil(count * self.important_fraction))
        high[np.argsort(-score, kind="stable")[:top]] = True
        for cls, pick in (("high", high), ("low", ~high)):
            sk, sv, sp = self._staged[cls]
            sk, sv = (np.concatenate([a, b[:, pick]], axis=1) for a, b in ((sk, k), (sv, v)))
            sp = np.concatenate([sp, pos[pick]])
            whole = len(sp) if pad else len(sp) // self.group * self.group
            self._quantize(cls, sk[:, :whole], sv[:, :whole], sp[:whole], pad)
            self._staged[cls] = (sk[:, whole:].copy(), sv[:, whole:].copy(), sp[whole:].copy())

    def _quantize(self, cls: str, k: np.ndarray, v: np.ndarray, pos: np.ndarray,
                  pad: bool) -> None:
        if len(pos) == 0:
            return
        store = self._active.get(cls)
        if store is None or store.sealed:
            fk, fv = self.formats[cls]
            store = PackedStore(fk, fv, self.heads, self.head_dim, self.group, self.group_v,
                                self.backend)
            self._active[cls] = store
            self.stores.append(store)
            self._store_pos[id(store)] = []
        store.append(k, v)
        if self.mixed:
            self._store_pos[id(store)].append(pos)

    def observe(self, weights) -> None:
        """MiKV: add attention probabilities [query heads, window tokens] (or [window tokens])
        to the window tokens' accumulated attention."""
        w = _as_array(weights, "weights")
        w = w.reshape(-1, w.shape[-1]).sum(axis=0) if w.ndim > 1 else w
        if w.shape != self._score.shape:
            raise UserArgumentError(f"weights: expected {len(self._score)} window tokens in the "
                                    f"last axis, got shape {np.shape(weights)}")
        self._score += w

    # ------------------------------------------------------------------ reading
    def float_segments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The float32 tokens (window, then MiKV's partial groups) as (K, V) pairs, each
        [heads, tokens, head_dim]."""
        segs = [tuple(self._window)]
        segs += [(sk, sv) for sk, sv, _ in self._staged.values()]
        return [s for s in segs if s[0].shape[1]]

    def window_keys(self) -> np.ndarray:
        """The window's keys [heads, tokens, head_dim]."""
        return self._window[0]

    def dequantize(self) -> tuple[np.ndarray, np.ndarray]:
        """Every token's keys and values in float32, in append order: [tokens, heads, head_dim]
        (with batch: [batch, tokens, heads, head_dim]); quantized tokens as attention sees them."""
        parts = [s.dequantize() for s in self.stores] + self.float_segments()
        k = np.concatenate([p[0] for p in parts] or [self._window[0]], axis=1)
        v = np.concatenate([p[1] for p in parts] or [self._window[1]], axis=1)
        if self.mixed:
            pos = np.concatenate([np.concatenate(self._store_pos[id(s)]) for s in self.stores]
                                 + [self._pos] + [sp for _, _, sp in self._staged.values()])
            order = np.argsort(pos, kind="stable")
            k, v = k[:, order], v[:, order]
        if self.batch > 1:
            shape = (self.batch, self.num_heads, k.shape[1], self.head_dim)
            return tuple(x.reshape(shape).transpose(0, 2, 1, 3).copy() for x in (k, v))
        return tuple(x.transpose(1, 0, 2).copy() for x in (k, v))

    def nbytes(self) -> int:
        """Bytes the cached tokens take: codes and scales of the packed pages, the float32
        tokens (the window's with their position and accumulated attention, 12 bytes a
        token), and (MiKV) each quantized token's position (int64, for `dequantize`)."""
        floats = sum(k.nbytes + v.nbytes for k, v in self.float_segments())
        floats += self._score.nbytes + self._pos.nbytes
        positions = sum(p.nbytes for ps in self._store_pos.values() for p in ps)
        return sum(s.nbytes() for s in self.stores) + floats + positions

    def allocated_nbytes(self) -> int:
        """Bytes of every array the cache holds, including unused pages."""
        arrays = [*self._window, self._score, self._pos]
        arrays += [a for st in self._staged.values() for a in st]
        arrays += [p for ps in self._store_pos.values() for p in ps]
        return sum(s.allocated() for s in self.stores) + sum(a.nbytes for a in arrays)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        fk, fv = self.formats["low"]
        return (f"QuantKVCache({self.length} tokens, {self.heads} heads x {self.head_dim}, "
                f"K {fk.name} V {fv.name}, group {self.group}/{self.group_v}, residual "
                f"{self.residual}{', MiKV' if self.mixed else ''}: {self.nbytes()} bytes)")
