//! The fixed-order numeric kernels: matrix products with one reduction order per output
//! element, element-wise functions compiled into this binary for the baseline target, so no
//! run-time CPU dispatch can pick another code path (`e^x` in `f32` from [`crate::expf`], the
//! others from the pure-Rust `libm` crate),
//! and numpy-style broadcasting. Rust never contracts `a * b + c` into a fused multiply-add,
//! so every product and sum below is rounded on its own, on every CPU.

/// `out[r][j] = (((+0 + x[r][0]·w[0][j]) + x[r][1]·w[1][j]) + …) + x[r][k-1]·w[k-1][j]`,
/// then `+ b[j]` when a bias is given, evaluated in exactly that order for every element.
/// `x` is `[rows, k]`, `w` is `[k, n]`, both row-major. Rows are computed independently
/// (split across up to `threads` scoped threads), so a row's result is the same in any batch
/// at any position with any thread count.
///
/// The work is tiled (4 rows × 8 columns of accumulators kept in registers, 16 columns with
/// AVX, 32 with AVX-512, then single rows and single columns for the edges); every tile runs the same `k` loop, so the tiling never
/// changes an element's order of operations. On CPUs with AVX or AVX-512 the same code is
/// compiled with 256- or 512-bit vectors (never FMA): each lane does the same IEEE multiply and add as
/// the scalar code, so the bits are the same on every path.
pub fn fixed_order_matmul<T: Num>(x: &[T], w: &[T], b: Option<&[T]>, k: usize, n: usize, threads: usize) -> Vec<T> {
    matmul::<T, false>(x, w, b, k, n, threads)
}

/// [`fixed_order_matmul`] with each step `acc = fma(x[r][kk], w[kk][j], acc)`: one rounding
/// per multiply-add instead of two, the same order. CPUs with FMA run it in hardware (AVX2 or
/// AVX-512 builds); others call the correctly rounded software `fma`, which gives the same
/// bits (far slower). For `[onnx] fused_multiply_add = true` versions.
pub fn fused_order_matmul<T: Num>(x: &[T], w: &[T], b: Option<&[T]>, k: usize, n: usize, threads: usize) -> Vec<T> {
    matmul::<T, true>(x, w, b, k, n, threads)
}

fn matmul<T: Num, const F: bool>(x: &[T], w: &[T], b: Option<&[T]>, k: usize, n: usize, threads: usize) -> Vec<T> {
    let rows = x.len().checked_div(k).unwrap_or(0);
    let mut out = vec![T::ZERO; rows * n];
    if n == 0 {
        return out;
    }
    if k == 0 {
        if let Some(b) = b {
            for yr in out.chunks_exact_mut(n) {
                for (acc, &bv) in yr.iter_mut().zip(b) {
                    *acc = *acc + bv;
                }
            }
        }
        return out;
    }
    let threads = threads.max(1).min(rows.max(1));
    if threads == 1 {
        rows_dispatch::<T, F>(x, w, b, k, n, &mut out);
    } else {
        let per = rows.div_ceil(threads);
        std::thread::scope(|s| {
            for (xs, ys) in x.chunks(per * k).zip(out.chunks_mut(per * n)) {
                s.spawn(move || rows_dispatch::<T, F>(xs, w, b, k, n, ys));
            }
        });
    }
    out
}

/// How a graph computes its matrix products: row threads, and fused multiply-adds or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Products {
    /// Row chunks computed in parallel (never changes a bit).
    pub threads: usize,
    /// [`fused_order_matmul`] instead of [`fixed_order_matmul`].
    pub fused: bool,
}

impl Products {
    /// `x · w (+ b)` with this setting.
    pub fn matmul<T: Num>(&self, x: &[T], w: &[T], b: Option<&[T]>, k: usize, n: usize) -> Vec<T> {
        if self.fused {
            fused_order_matmul(x, w, b, k, n, self.threads)
        } else {
            fixed_order_matmul(x, w, b, k, n, self.threads)
        }
    }
}

/// Picks the widest build of [`rows_kernel`] the CPU has (same bits, wider vectors). Fused
/// kernels use hardware FMA only where the CPU has it.
fn rows_dispatch<T: Num, const F: bool>(xs: &[T], w: &[T], b: Option<&[T]>, k: usize, n: usize, ys: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        // SAFETY (each call): the CPU supports the features the function enables, checked
        // on the same line; the functions only enable them.
        if !F && has!("avx512f") {
            return unsafe { rows_avx512(xs, w, b, k, n, ys) };
        }
        if !F && has!("avx") {
            return unsafe { rows_avx(xs, w, b, k, n, ys) };
        }
        if F && has!("avx512f") && has!("fma") {
            return unsafe { rows_avx512_fma(xs, w, b, k, n, ys) };
        }
        if F && has!("avx2") && has!("fma") {
            return unsafe { rows_avx2_fma(xs, w, b, k, n, ys) };
        }
    }
    rows_kernel::<T, 8, F>(xs, w, b, k, n, ys);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn rows_avx<T: Num>(xs: &[T], w: &[T], b: Option<&[T]>, k: usize, n: usize, ys: &mut [T]) {
    // 16 columns: two 256-bit accumulators per row, eight independent add chains per tile.
    rows_kernel::<T, 16, false>(xs, w, b, k, n, ys);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512<T: Num>(xs: &[T], w: &[T], b: Option<&[T]>, k: usize, n: usize, ys: &mut [T]) {
    // 32 columns: two 512-bit accumulators per row. AVX-512F only: no FMA is enabled, and
    // Rust never fuses a multiply and an add on its own.
    rows_kernel::<T, 32, false>(xs, w, b, k, n, ys);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2_fma<T: Num>(xs: &[T], w: &[T], b: Option<&[T]>, k: usize, n: usize, ys: &mut [T]) {
    rows_kernel::<T, 16, true>(xs, w, b, k, n, ys);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn rows_avx512_fma<T: Num>(xs: &[T], w: &[T], b: Option<&[T]>, k: usize, n: usize, ys: &mut [T]) {
    rows_kernel::<T, 32, true>(xs, w, b, k, n, ys);
}

/// One step of a reduction: `acc + x·w`, rounded twice, or fused (`F`), rounded once.
#[inline(always)]
fn step<T: Num, const F: bool>(acc: T, x: T, w: T) -> T {
    if F {
        x.mul_add(w, acc)
    } else {
        acc + x * w
    }
}

const TILE_ROWS: usize = 4;

/// One tile: `R` rows × `J` columns starting at `(r0, j0)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<T: Num, const R: usize, const J: usize, const F: bool>(
    xs: &[T],
    w: &[T],
    b: Option<&[T]>,
    k: usize,
    n: usize,
    r0: usize,
    j0: usize,
    ys: &mut [T],
) {
    let mut acc = [[T::ZERO; J]; R];
    // Each row's `k` inputs and each step's `J` weights as slices of known length, so the
    // loop runs without bounds checks.
    let x: [&[T]; R] = std::array::from_fn(|r| &xs[(r0 + r) * k..(r0 + r + 1) * k]);
    for (kk, wrow) in w.chunks_exact(n).take(k).enumerate() {
        let wr: &[T; J] = match wrow[j0..j0 + J].try_into() {
            Ok(wr) => wr,
            Err(_) => unreachable!("a slice of J elements"),
        };
        for (a, xr) in acc.iter_mut().zip(&x) {
            let xv = xr[kk];
            for (av, &wv) in a.iter_mut().zip(wr) {
                *av = step::<T, F>(*av, xv, wv);
            }
        }
    }
    for (r, a) in acc.iter_mut().enumerate() {
        if let Some(b) = b {
            for (av, &bv) in a.iter_mut().zip(&b[j0..j0 + J]) {
                *av = *av + bv;
            }
        }
        ys[(r0 + r) * n + j0..(r0 + r) * n + j0 + J].copy_from_slice(a);
    }
}

/// Every row of `xs` times `w`, tiled `4 × COLS`, the remaining columns `4 × 8`, the last
/// few columns across rows ([`narrow_columns`]); see [`fixed_order_matmul`] for the order.
#[inline(always)]
fn rows_kernel<T: Num, const COLS: usize, const F: bool>(
    xs: &[T],
    w: &[T],
    b: Option<&[T]>,
    k: usize,
    n: usize,
    ys: &mut [T],
) {
    let rows = xs.len() / k;
    let full_rows = rows - rows % TILE_ROWS;
    let wide = n - n % COLS;
    let narrow = wide + (n - wide) / 8 * 8;
    let mut r0 = 0;
    while r0 < rows {
        let block = r0 < full_rows;
        let mut j0 = 0;
        while j0 < wide {
            if block {
                tile::<T, TILE_ROWS, COLS, F>(xs, w, b, k, n, r0, j0, ys);
            } else {
                tile::<T, 1, COLS, F>(xs, w, b, k, n, r0, j0, ys);
            }
            j0 += COLS;
        }
        while j0 < narrow {
            if block {
                tile::<T, TILE_ROWS, 8, F>(xs, w, b, k, n, r0, j0, ys);
            } else {
                tile::<T, 1, 8, F>(xs, w, b, k, n, r0, j0, ys);
            }
            j0 += 8;
        }
        r0 += if block { TILE_ROWS } else { 1 };
    }
    if narrow < n {
        narrow_columns::<T, 16, F>(xs, w, b, k, n, narrow, ys);
    }
}

/// Columns `j0..n` (fewer than 8) of every row, vectorised across rows: a block of `ROWS`
/// rows is copied transposed (`[k][ROWS]`), then each output column accumulates
/// `acc[r] += xᵀ[kk][r] · w[kk][j]` for `kk` in order, so each element keeps the order of
/// [`fixed_order_matmul`]. Rows left over take one-element tiles.
#[inline(always)]
fn narrow_columns<T: Num, const ROWS: usize, const F: bool>(
    xs: &[T],
    w: &[T],
    b: Option<&[T]>,
    k: usize,
    n: usize,
    j0: usize,
    ys: &mut [T],
) {
    let rows = xs.len() / k;
    let blocks = rows / ROWS;
    let mut xt = vec![[T::ZERO; ROWS]; k];
    for blk in 0..blocks {
        let r0 = blk * ROWS;
        for (kk, col) in xt.iter_mut().enumerate() {
            for (r, v) in col.iter_mut().enumerate() {
                *v = xs[(r0 + r) * k + kk];
            }
        }
        // All the narrow columns at once: independent accumulators hide the add latency.
        let mut acc = [[T::ZERO; ROWS]; 8];
        let cols = n - j0;
        for (kk, col) in xt.iter().enumerate() {
            let wr = &w[kk * n + j0..kk * n + n];
            for (a, &wv) in acc.iter_mut().zip(wr) {
                for (av, &xv) in a.iter_mut().zip(col) {
                    *av = step::<T, F>(*av, xv, wv);
                }
            }
        }
        for (jj, a) in acc.iter_mut().enumerate().take(cols) {
            let j = j0 + jj;
            if let Some(b) = b {
                for av in a.iter_mut() {
                    *av = *av + b[j];
                }
            }
            for (r, av) in a.iter().enumerate() {
                ys[(r0 + r) * n + j] = *av;
            }
        }
    }
    for r in blocks * ROWS..rows {
        for j in j0..n {
            tile::<T, 1, 1, F>(xs, w, b, k, n, r, j, ys);
        }
    }
}

/// The element types the arithmetic kernels run on.
pub trait Num:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
{
    /// Additive identity (`+0` for floats).
    const ZERO: Self;
    /// `self · a + b` with one rounding (integers: exact).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// Division as ONNX `Div` defines it for the type (integers: truncating; division by
    /// zero gives 0 rather than a panic).
    fn div(self, other: Self) -> Self;
}

impl Num for f32 {
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
    const ZERO: Self = 0.0;
    fn div(self, other: Self) -> Self {
        self / other
    }
}

impl Num for f64 {
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
    const ZERO: Self = 0.0;
    fn div(self, other: Self) -> Self {
        self / other
    }
}

impl Num for i64 {
    fn mul_add(self, a: Self, b: Self) -> Self {
        self.wrapping_mul(a).wrapping_add(b)
    }
    const ZERO: Self = 0;
    fn div(self, other: Self) -> Self {
        self.checked_div(other).unwrap_or(0)
    }
}

impl Num for i32 {
    fn mul_add(self, a: Self, b: Self) -> Self {
        self.wrapping_mul(a).wrapping_add(b)
    }
    const ZERO: Self = 0;
    fn div(self, other: Self) -> Self {
        self.checked_div(other).unwrap_or(0)
    }
}

/// Floating-point element types: the transcendental functions, all from `libm`.
pub trait Float: Num + std::ops::Neg<Output = Self> + std::ops::Div<Output = Self> {
    /// 1.
    const ONE: Self;
    /// `e^x`.
    fn exp(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// From an attribute value.
    fn from_f32(v: f32) -> Self;
}

impl Float for f32 {
    const ONE: Self = 1.0;
    fn exp(self) -> Self {
        crate::expf::expf(self)
    }
    fn tanh(self) -> Self {
        libm::tanhf(self)
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Float for f64 {
    const ONE: Self = 1.0;
    fn exp(self) -> Self {
        libm::exp(self)
    }
    fn tanh(self) -> Self {
        libm::tanh(self)
    }
    fn from_f32(v: f32) -> Self {
        v as f64
    }
}

/// The logistic function, evaluated as `1 / (1 + e^-x)` for every `x` (the exponential may
/// overflow to infinity for very negative `x`, which gives the exact limit 0).
pub fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// Softmax of one row in a fixed order: `m = max` (left to right), `e_i = exp(x_i - m)`,
/// `s = Σ e_i` (left to right), `y_i = e_i / s`.
pub fn softmax_row<T: Float>(row: &mut [T]) {
    let Some(&first) = row.first() else { return };
    let m = row.iter().fold(first, |m, &v| if v > m { v } else { m });
    let mut s = T::ZERO;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        s = s + *v;
    }
    for v in row.iter_mut() {
        *v = *v / s;
    }
}

/// The shape two operands broadcast to (numpy's multidirectional rule), or `None`.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// For each element of `out_shape`, the index of the element of an operand of `shape` it
/// reads (the operand broadcast to `out_shape`).
fn broadcast_index(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let rank = out_shape.len();
    let mut strides = vec![0usize; rank];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        let o = i + rank - shape.len();
        strides[o] = if shape[i] == 1 { 0 } else { stride };
        stride *= shape[i];
    }
    let total: usize = out_shape.iter().product();
    let mut idx = Vec::with_capacity(total);
    let mut counter = vec![0usize; rank];
    let mut at = 0usize;
    for _ in 0..total {
        idx.push(at);
        for d in (0..rank).rev() {
            counter[d] += 1;
            at += strides[d];
            if counter[d] < out_shape[d] {
                break;
            }
            at -= strides[d] * counter[d];
            counter[d] = 0;
        }
    }
    idx
}

/// `f(a, b)` element-wise with broadcasting; `out_shape` from [`broadcast_shape`]. Equal
/// shapes, a scalar operand, and a trailing-dimensions operand (`[n, c] ∘ [c]`) take direct
/// loops; the rest goes through index maps. Each element is computed alone, so the paths
/// cannot differ in bits.
pub fn broadcast<A: Copy, B: Copy, O>(
    a: &[A],
    a_shape: &[usize],
    b: &[B],
    b_shape: &[usize],
    out_shape: &[usize],
    f: impl Fn(A, B) -> O,
) -> Vec<O> {
    let total: usize = out_shape.iter().product();
    if a.len() == total && b.len() == total {
        return a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
    }
    if b.len() == 1 && a.len() == total {
        let y = b[0];
        return a.iter().map(|&x| f(x, y)).collect();
    }
    if a.len() == 1 && b.len() == total {
        let x = a[0];
        return b.iter().map(|&y| f(x, y)).collect();
    }
    // Leading 1s do not change which element an operand supplies: `[1, c]` is `[c]`.
    let suffix = |s: &[usize]| {
        let first = s.iter().position(|&d| d != 1).unwrap_or(s.len());
        let s = &s[first..];
        !s.is_empty() && s.len() <= out_shape.len() && out_shape.ends_with(s)
    };
    if a.len() == total && suffix(b_shape) && !b.is_empty() {
        let mut out = Vec::with_capacity(total);
        for chunk in a.chunks_exact(b.len()) {
            out.extend(chunk.iter().zip(b).map(|(&x, &y)| f(x, y)));
        }
        return out;
    }
    if b.len() == total && suffix(a_shape) && !a.is_empty() {
        let mut out = Vec::with_capacity(total);
        for chunk in b.chunks_exact(a.len()) {
            out.extend(a.iter().zip(chunk).map(|(&x, &y)| f(x, y)));
        }
        return out;
    }
    let ia = broadcast_index(a_shape, out_shape);
    let ib = broadcast_index(b_shape, out_shape);
    ia.iter().zip(&ib).map(|(&i, &j)| f(a[i], b[j])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_paths_agree() {
        let a: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..4).map(|i| i as f32 * 0.5).collect();
        let shape = broadcast_shape(&[2, 3, 4], &[4]).unwrap();
        let fast = broadcast(&a, &[2, 3, 4], &b, &[4], &shape, |x, y| x * y);
        let ia = broadcast_index(&[2, 3, 4], &shape);
        let ib = broadcast_index(&[4], &shape);
        let slow: Vec<f32> = ia.iter().zip(&ib).map(|(&i, &j)| a[i] * b[j]).collect();
        assert_eq!(fast, slow);
        let col: Vec<f32> = vec![1.0, 2.0, 3.0];
        let shape = broadcast_shape(&[3, 1], &[1, 4]).unwrap();
        assert_eq!(shape, vec![3, 4]);
        let out = broadcast(&col, &[3, 1], &b, &[1, 4], &shape, |x, y| x + y);
        assert_eq!(out[4..8], [2.0, 2.5, 3.0, 3.5]);
        assert!(broadcast_shape(&[2, 3], &[4]).is_none());
    }

    #[test]
    fn tiles_and_edges_follow_the_sequential_definition() {
        for (rows, k, n) in [
            (9, 13, 19),
            (4, 8, 8),
            (1, 1, 1),
            (7, 3, 17),
            (33, 64, 2),
            (8, 40, 48),
            (5, 9, 70),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 2011) as f32 / 301.0 - 3.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 0.7).collect();
            let mut scalar = vec![0f32; rows * n];
            rows_kernel::<f32, 8, false>(&x, &w, Some(&b), k, n, &mut scalar);
            let mut wide = vec![0f32; rows * n];
            rows_kernel::<f32, 16, false>(&x, &w, Some(&b), k, n, &mut wide);
            assert_eq!(wide, scalar);
            rows_kernel::<f32, 32, false>(&x, &w, Some(&b), k, n, &mut wide);
            assert_eq!(wide, scalar);
            for r in 0..rows {
                for j in 0..n {
                    let mut acc = 0f32;
                    for kk in 0..k {
                        acc += x[r * k + kk] * w[kk * n + j];
                    }
                    acc += b[j];
                    assert_eq!(scalar[r * n + j].to_bits(), acc.to_bits(), "{rows}x{k}x{n} at {r},{j}");
                }
            }
            let dispatched = fixed_order_matmul(&x, &w, Some(&b), k, n, 1);
            assert_eq!(dispatched, scalar, "the AVX build gives other bits");
        }
    }

    #[test]
    fn fused_kernels_follow_the_sequential_definition_in_hardware_and_software() {
        for (rows, k, n) in [(9, 13, 19), (33, 64, 2), (8, 40, 48), (5, 9, 70), (256, 32, 64)] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729) % 2011) as f32 / 301.0 - 3.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 0.7).collect();
            let mut reference = vec![0f32; rows * n];
            for r in 0..rows {
                for j in 0..n {
                    let mut acc = 0f32;
                    for kk in 0..k {
                        acc = x[r * k + kk].mul_add(w[kk * n + j], acc);
                    }
                    reference[r * n + j] = acc + b[j];
                }
            }
            // The baseline build: `mul_add` is the software fma here (no FMA target feature).
            let mut software = vec![0f32; rows * n];
            rows_kernel::<f32, 8, true>(&x, &w, Some(&b), k, n, &mut software);
            assert_eq!(software, reference, "{rows}x{k}x{n}: software fma");
            // The dispatched build: hardware FMA on CPUs that have it.
            assert_eq!(
                fused_order_matmul(&x, &w, Some(&b), k, n, 1),
                reference,
                "{rows}x{k}x{n}: dispatched"
            );
            assert_eq!(
                fused_order_matmul(&x, &w, Some(&b), k, n, 3),
                reference,
                "{rows}x{k}x{n}: threads"
            );
            assert_ne!(
                fixed_order_matmul(&x, &w, Some(&b), k, n, 1),
                reference,
                "{rows}x{k}x{n}: fused = unfused?"
            );
        }
    }

    #[test]
    fn matmul_is_the_sequential_definition() {
        let (k, n) = (5, 3);
        let x: Vec<f32> = (0..10).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..15).map(|i| (i as f32 * 0.91).cos()).collect();
        let b = [0.25f32, -1.0, 3.5];
        let out = fixed_order_matmul(&x, &w, Some(&b), k, n, 1);
        for r in 0..2 {
            for j in 0..n {
                let mut acc = 0f32;
                for kk in 0..k {
                    acc += x[r * k + kk] * w[kk * n + j];
                }
                acc += b[j];
                assert_eq!(out[r * n + j].to_bits(), acc.to_bits());
            }
        }
    }
}
