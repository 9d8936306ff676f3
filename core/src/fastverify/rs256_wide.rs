//! RSA's public operation with 50-bit limbs: about a third as many limb products as 28-bit
//! limbs (41 limbs instead of 74 for 2048 bits, so 1,681 products per product of two numbers
//! instead of 5,476).
//!
//! WebAssembly has no 64x64->128-bit multiply (wide-arithmetic is a proposal V8 does not ship),
//! but relaxed SIMD's `f64x2.relaxed_madd` is a fused multiply-add where the hardware has one
//! (every x86-64 CPU since 2013 and every AArch64 CPU), and a fused multiply-add splits the
//! product of two integers below 2^50 exactly into a high and a low part (Dekker's product,
//! as GPU RSA codes use it):
//!
//! - `h = fma(a, b, 2^102)`: in `[2^102, 2^103)` the spacing of doubles is 2^50, so `h` is
//!   `2^102 + H * 2^50` with `H = round(a * b / 2^50)`, and the bits of `h` as an integer are
//!   the bits of 2^102 plus `H`;
//! - `l = fma(a, b, (2^102 + 1.5 * 2^52) - h)`: the addend is exactly `1.5 * 2^52 - H * 2^50`,
//!   so `l = 1.5 * 2^52 + L` with `L = a * b - H * 2^50` in `[-2^49, 2^49]`; in `[2^52, 2^53)`
//!   doubles are the integers, so `l` is exact and its bits are those of `1.5 * 2^52` plus `L`.
//!
//! Both are summed as 64-bit integers (`i64x2.add` on the same vector), two products per
//! instruction, and the constant bits are subtracted once per column. Column sums then go
//! through a product-scanning Montgomery product as in `rs256.rs`, in 64-bit integers. For
//! 2048-bit moduli every column is its own instance of a const-generic function, so that its
//! ranges, bounds checks and loop counts are constants, and a squaring sums each cross product
//! once: in Envoy a first-time RS256-2048 request went from 708k to 443k instructions over no
//! auth with that (`jwt_authn`: 426k).
//!
//! Whether `relaxed_madd` is fused is up to the host; [`available`] checks it once per VM on a
//! product whose low part an unfused multiply-add loses, and the verifier keeps the 28-bit
//! arithmetic for hosts where it is not. Natively this file multiplies in `u128`, which the
//! tests compare with the SIMD kernel in V8. Only public data is handled, so none of it is
//! constant-time.

/// Bits per limb.
pub(super) const LIMB_BITS: u32 = 50;
/// Mask of one limb's bits.
pub(super) const MASK: u64 = (1 << LIMB_BITS) - 1;
/// Zero limbs on each side of every operand: ranges of pairs widen into them, to a multiple of
/// two (one SIMD step) and, in a squaring, by up to two limbs more on either side.
const PAD: usize = 4;

/// A [`padded`] buffer of a 2048-bit modulus' 41 limbs.
const LIMBS_41: usize = 41 + 2 * PAD;

/// The modulus reversed, `a`, `b` (reversed), the reduction factors and the result of a 41-limb
/// product ([`Wide::arrays_41`]).
type Arrays41<'a> = (
    &'a [f64; LIMBS_41],
    &'a [f64; LIMBS_41],
    &'a [f64; LIMBS_41],
    &'a mut [f64; LIMBS_41],
    &'a mut [f64; LIMBS_41],
);

/// The 82 columns of a 41-limb Montgomery product or squaring, each one call of `$column` with
/// the column as a const generic, so that every range in it is a constant: columns below 41
/// choose a reduction factor, the others are the result's limbs; then the final subtraction.
macro_rules! columns_41 {
    ($self:ident, $a:ident, $b:ident, $m:ident, $n:ident, $out:ident, $column:ident) => {
        columns_41!(
            @run $self, $a, $b, $m, $n, $out, $column,
            [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40],
            [41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81]
        )
    };
    (
        @run $self:ident, $a:ident, $b:ident, $m:ident, $n:ident, $out:ident, $column:ident,
        [$($i:literal)*], [$($j:literal)*]
    ) => {{
        let mut carry = 0i64;
        let mut high = 0i64;
        $(
            let (low, next_high) = $column::<$i, LIMBS_41>($a, $b, $m, $n);
            carry = $self.reduce($m, $i, low + high + carry);
            high = next_high;
        )*
        $(
            let (low, next_high) = $column::<$j, LIMBS_41>($a, $b, $m, $n);
            carry = output($out, $j - 41, low + high + carry);
            high = next_high;
        )*
        $self.reduce_below_n($out, carry + high);
    }};
}

/// The modulus and its Montgomery constants for 50-bit limbs.
#[derive(Clone)]
pub(super) struct Wide {
    /// Limbs of the modulus, little-endian.
    n: Vec<u64>,
    /// The modulus' limbs most significant first, [`padded`].
    n_reversed: Vec<f64>,
    /// `-n^-1 mod 2^50`.
    n_inv: u64,
    /// `R^2 mod n` for `R = 2^(50 * k)`, most significant limb first, [`padded`].
    r_squared_reversed: Vec<f64>,
    /// The modulus' lowest limb, as a double.
    n0: f64,
    /// Modulus length in bytes.
    modulus_len: usize,
}

impl Wide {
    /// Prepares the constants for a modulus given big-endian without leading zeros, of `bits`
    /// bits (odd, at least 2 bits: the caller checked it is an RSA modulus).
    pub(super) fn new(n: &[u8], bits: usize) -> Self {
        // Enough limbs for every bit of a signature as long as the modulus (which has up to
        // seven bits more than the modulus), so that none is dropped before `s < n` is checked.
        let k = (n.len() * 8)
            .div_ceil(LIMB_BITS as usize)
            .max(bits.div_ceil(LIMB_BITS as usize));
        let limbs = be_bytes_to_limbs(n, k);
        let n_inv = neg_inverse_mod_2_64(limbs.first().copied().unwrap_or(1)) & MASK;
        let r_squared = pow2_mod(&limbs, bits, 2 * LIMB_BITS as usize * k);
        Self {
            n0: limbs.first().map_or(0.0, |&limb| limb as i64 as f64),
            n_reversed: padded_reversed(&limbs),
            n: limbs,
            n_inv,
            r_squared_reversed: padded_reversed(&r_squared),
            modulus_len: n.len(),
        }
    }

    /// Heap bytes held.
    pub(super) fn heap_bytes(&self) -> usize {
        (self.n.capacity() + self.n_reversed.capacity() + self.r_squared_reversed.capacity()) * 8
    }

    /// `s^e mod n` as a big-endian block of the modulus' length, or `None` if `s >= n` or `s`
    /// is not exactly as long as the modulus. `e` is odd and above 1.
    pub(super) fn public_op(&self, signature: &[u8], e: u64) -> Option<Vec<u8>> {
        let k = self.n.len();
        if signature.len() != self.modulus_len {
            return None;
        }
        let s = be_bytes_to_limbs(signature, k);
        if !super::less_than(&s, &self.n) {
            return None;
        }
        let zeros = vec![0.0; k + 2 * PAD];
        let (mut m, mut reversed, mut acc, mut tmp) =
            (zeros.clone(), zeros.clone(), zeros.clone(), zeros);
        // s * R mod n, the Montgomery form of s, and its limbs reversed as a fixed multiplicand
        // for the bits between the top and the lowest one (65537 has none).
        self.mont_product(&padded(&s), &self.r_squared_reversed, &mut m, &mut acc);
        let top_bit = 63 - e.leading_zeros();
        let middle_bits = e & !(1 | 1 << top_bit);
        let s_mont_reversed = if middle_bits != 0 {
            reverse(&acc)
        } else {
            Vec::new()
        };
        // Left to right over the bits between the top and the lowest one, as in `rs256.rs`.
        for bit in (1..top_bit).rev() {
            self.mont_square(&acc, &mut reversed, &mut m, &mut tmp);
            std::mem::swap(&mut acc, &mut tmp);
            if (e >> bit) & 1 == 1 {
                self.mont_product(&acc, &s_mont_reversed, &mut m, &mut tmp);
                std::mem::swap(&mut acc, &mut tmp);
            }
        }
        // Lowest bit: square, then multiply by plain s, which also leaves the Montgomery domain.
        self.mont_square(&acc, &mut reversed, &mut m, &mut tmp);
        self.mont_product(&tmp, &padded_reversed(&s), &mut m, &mut acc);
        let limbs: Vec<u64> = unpadded(&acc).iter().map(|&limb| limb as u64).collect();
        Some(limbs_to_be_bytes(&limbs, self.modulus_len))
    }

    /// Montgomery product `out = a * b * R^-1 mod n` for `a, b < n`, with `b` given most
    /// significant limb first. Operands, `m` (scratch for the reduction factors) and `out` are
    /// [`padded`] buffers of this modulus' limb count.
    ///
    /// Product scanning as in `rs256.rs`, one column a pass: column `i` sums `a_j * b_(i-j)` and
    /// `m_j * n_(i-j)` as dot products of forward slices in one loop ([`kernel::dot2`]), as the
    /// sum of the products' low parts (they stay in the column) and of their high parts (they go
    /// to the next one). A pass runs before `m_i` is chosen, with `m_i` still zero; `m_i * n_0`
    /// is added exactly afterwards. Sums stay below 2^59 in magnitude for up to 82 limbs (4096
    /// bits); low parts may be negative, so columns and carries are signed. Two columns a pass
    /// measured slower in V8 (twice the accumulators, for low and high parts, spill). 2048-bit
    /// moduli (41 limbs) run [`Self::mont_product_unrolled_41`], every range a constant; the
    /// other usual sizes run this code compiled for their limb count, and their squarings come
    /// here too ([`Self::mont_square`]).
    fn mont_product(&self, a: &[f64], b_reversed: &[f64], m: &mut [f64], out: &mut [f64]) {
        // The usual key sizes get the product compiled for their limb count, so that the
        // bounds are constants (0.57M -> 0.54M instructions per RS256-2048 verify in Node's V8
        // before 2048 bits got the unrolled product).
        match self.n.len() {
            41 => self.mont_product_unrolled_41(a, b_reversed, m, out),
            62 => self.mont_product_sized::<{ 62 + 2 * PAD }>(a, b_reversed, m, out),
            82 => self.mont_product_sized::<{ 82 + 2 * PAD }>(a, b_reversed, m, out),
            k => self.mont_product_for(k, &self.n_reversed, a, b_reversed, m, out),
        }
    }

    /// [`Self::mont_product`] on buffers of `L` limbs (`L - 2 * PAD` limbs of the modulus):
    /// nothing happens if they are not.
    #[inline(never)]
    fn mont_product_sized<const L: usize>(
        &self,
        a: &[f64],
        b_reversed: &[f64],
        m: &mut [f64],
        out: &mut [f64],
    ) {
        if let (Ok(n_reversed), Ok(a), Ok(b_reversed), Ok(m), Ok(out)) = (
            <&[f64; L]>::try_from(self.n_reversed.as_slice()),
            <&[f64; L]>::try_from(a),
            <&[f64; L]>::try_from(b_reversed),
            <&mut [f64; L]>::try_from(m),
            <&mut [f64; L]>::try_from(out),
        ) {
            self.mont_product_for(L - 2 * PAD, n_reversed, a, b_reversed, m, out);
        }
    }

    /// Montgomery squaring `out = a^2 * R^-1 mod n` for `a < n`, with `scratch` for the reversed
    /// (or doubled and reversed) operand; buffers as for [`Self::mont_product`].
    fn mont_square(&self, a: &[f64], scratch: &mut [f64], m: &mut [f64], out: &mut [f64]) {
        if self.n.len() == 41 {
            doubled_reverse_into(a, scratch);
            self.mont_square_unrolled_41(a, scratch, m, out);
        } else {
            reverse_into(a, scratch);
            self.mont_product(a, scratch, m, out);
        }
    }

    /// Squaring for 41 limbs with every column's range a constant, `a_doubled_reversed` the
    /// limbs of `2a` most significant first ([`doubled_reverse_into`]). Each cross product
    /// `a_j * a_l` (`j < l`) is summed once, as `a_j * 2a_l` (below 2^101, which the split still
    /// takes: see [`kernel`]), and the square `a_(i/2)^2` added; [`square_column`] has the
    /// ranges.
    #[inline(never)]
    fn mont_square_unrolled_41(
        &self,
        a: &[f64],
        a_doubled_reversed: &[f64],
        m: &mut [f64],
        out: &mut [f64],
    ) {
        if let Some((n, a, a2, m, out)) = self.arrays_41(a, a_doubled_reversed, m, out) {
            columns_41!(self, a, a2, m, n, out, square_column);
        }
    }

    /// [`Self::mont_product`] for 41 limbs with every column's range a constant.
    #[inline(never)]
    fn mont_product_unrolled_41(
        &self,
        a: &[f64],
        b_reversed: &[f64],
        m: &mut [f64],
        out: &mut [f64],
    ) {
        if let Some((n, a, b, m, out)) = self.arrays_41(a, b_reversed, m, out) {
            columns_41!(self, a, b, m, n, out, product_column_sized);
        }
    }

    /// The modulus reversed and the four buffers of a 41-limb product as arrays (so that
    /// constant ranges in them need no bounds checks), with the reduction factors zeroed.
    fn arrays_41<'a>(
        &'a self,
        a: &'a [f64],
        b: &'a [f64],
        m: &'a mut [f64],
        out: &'a mut [f64],
    ) -> Option<Arrays41<'a>> {
        let m: &mut [f64; LIMBS_41] = m.try_into().ok()?;
        m.fill(0.0);
        Some((
            self.n_reversed.as_slice().try_into().ok()?,
            a.try_into().ok()?,
            b.try_into().ok()?,
            m,
            out.try_into().ok()?,
        ))
    }

    /// [`Self::mont_product`] for `k` limbs, the modulus' count, with `n_reversed` the modulus'
    /// reversed limbs.
    #[inline(always)]
    fn mont_product_for(
        &self,
        k: usize,
        n_reversed: &[f64],
        a: &[f64],
        b_reversed: &[f64],
        m: &mut [f64],
        out: &mut [f64],
    ) {
        m.fill(0.0);
        let mut carry = 0i64;
        let mut high = 0i64;
        for i in 0..k {
            let (low, next_high) = product_column(k, i, [a, b_reversed, m, n_reversed]);
            carry = self.reduce(m, i, low + high + carry);
            high = next_high;
        }
        for i in k..2 * k {
            let (low, next_high) = product_column(k, i, [a, b_reversed, m, n_reversed]);
            carry = output(out, i - k, low + high + carry);
            high = next_high;
        }
        self.reduce_below_n(out, carry + high);
    }

    /// Column `i < k` of a Montgomery product, all of it summed but `m_i * n_0`: chooses `m_i`
    /// (stored in `m`) so that the column's low limb becomes zero, and returns the carry out.
    #[inline(always)]
    fn reduce(&self, m: &mut [f64], i: usize, column: i64) -> i64 {
        let m_i = ((column as u64 & MASK).wrapping_mul(self.n_inv)) & MASK;
        let factor = m_i as i64 as f64;
        if let Some(slot) = m.get_mut(PAD + i) {
            *slot = factor;
        }
        // column + m_i * n_0 is a multiple of 2^50 (that is what m_i is for), and so is
        // column + low for any split m_i * n_0 = high * 2^50 + low.
        let (low, high) = kernel::split(factor, self.n0);
        ((column + low) >> LIMB_BITS) + high
    }

    /// The last step of a Montgomery product: the result in `out` (with `top` above its top
    /// limb, 0 or 1, as the result is below `2n < 2R`) subtracts `n` once if it is not below `n`.
    fn reduce_below_n(&self, out: &mut [f64], top: i64) {
        let k = self.n.len();
        if let Some(result) = out.get_mut(PAD..PAD + k) {
            if top != 0 || !less_than_f64(result, &self.n) {
                sub_in_place(result, &self.n);
            }
        }
    }
}

/// Column `i` of a Montgomery product of `k` limbs: the sums of its pairs `a_j * b_(i-j)` and
/// `m_j * n_(i-j)` from `[a, b reversed, m, n reversed]`. Below `k` the pairs are `j` in `0..=i`,
/// widened by one into the padding past `b`'s and `n`'s lowest limb; from `k` on they are `j` in
/// `i-k+1..k`, widened by one into the padding past `a`'s and the factors' top limb.
#[inline(always)]
fn product_column(k: usize, i: usize, [a, b, m, n]: [&[f64]; 4]) -> (i64, i64) {
    let (from, partner, width) = if i < k {
        (PAD, PAD + k - 1 - i, (i + 1).next_multiple_of(2))
    } else {
        (PAD + i + 1 - k, PAD, (2 * k - 1 - i).next_multiple_of(2))
    };
    dot2(
        a.get(from..from + width),
        b.get(partner..partner + width),
        m.get(from..from + width),
        n.get(partner..partner + width),
    )
}

/// [`product_column`] `I` of `L - 2 * PAD` limbs, its ranges constants.
#[inline(always)]
fn product_column_sized<const I: usize, const L: usize>(
    a: &[f64; L],
    b: &[f64; L],
    m: &[f64; L],
    n: &[f64; L],
) -> (i64, i64) {
    product_column(L - 2 * PAD, I, [a, b, m, n])
}

/// Column `I` of a squaring of `L - 2 * PAD` limbs, its ranges constants: the sums of its cross
/// pairs against the doubled operand, its reduction pairs, and the square of `a_(I/2)`.
///
/// The pairs `(j, I - j)` with both below `k` run from `start` to below `top`; the cross pairs
/// (`j < I - j`) end at `mid`. One loop of `width` pairs around `mid` takes all of them
/// ([`kernel::dot3`]): the cross pairs and the reduction's below `mid`, which share their
/// partners' positions in the reversed operands, and the reduction's from `mid` up. `width`
/// covers both ranges rounded up to a SIMD step, so the loop starts at most two pairs below
/// `start` (at or above index `PAD - 2`, as `mid - width >= start - 2 >= I - k - 1`), and every
/// pair it adds has a zero on one side: padding, or a reduction factor not chosen yet.
#[inline(always)]
fn square_column<const I: usize, const L: usize>(
    a: &[f64; L],
    a_doubled_reversed: &[f64; L],
    m: &[f64; L],
    n: &[f64; L],
) -> (i64, i64) {
    let k = L - 2 * PAD;
    let start = (I + 1).saturating_sub(k);
    let top = if I < k { I + 1 } else { k };
    let mid = if I.div_ceil(2) > start {
        I.div_ceil(2)
    } else {
        start
    };
    let width = if mid - start > top - mid {
        mid - start
    } else {
        top - mid
    }
    .next_multiple_of(2);
    let from = PAD + mid - width;
    let partner = PAD + k + mid - (1 + I + width);
    let (low, high) = dot3(
        a.get(from..from + width),
        a_doubled_reversed.get(partner..partner + width),
        m.get(from..from + 2 * width),
        n.get(partner..partner + 2 * width),
    );
    if I % 2 == 0 {
        let limb = a.get(PAD + I / 2).map_or(0, |&limb| limb_value(limb));
        let (square_low, square_high) = mul_split(limb, limb);
        (low + square_low as i64, high + square_high as i64)
    } else {
        (low, high)
    }
}

/// Column `k + index` of a Montgomery product, the result's limb `index`: stores its low limb and
/// returns the carry out.
#[inline(always)]
fn output(out: &mut [f64], index: usize, column: i64) -> i64 {
    if let Some(slot) = out.get_mut(PAD + index) {
        *slot = (column as u64 & MASK) as i64 as f64;
    }
    column >> LIMB_BITS
}

/// Whether this host's `f64x2.relaxed_madd` is fused, checked once per VM: natively (no SIMD)
/// and in Wasm builds without relaxed SIMD the answer is fixed.
pub(super) fn available() -> bool {
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    {
        static FUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FUSED.get_or_init(kernel::fused)
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "relaxed-simd")))]
    {
        false
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        true
    }
}

/// The sums of `x[t] * y[t] + m[t] * n[t]` ([`kernel::dot2`]): low parts, high parts. Zeros
/// if a slice is missing or the lengths differ.
#[inline(always)]
fn dot2(x: Option<&[f64]>, y: Option<&[f64]>, m: Option<&[f64]>, n: Option<&[f64]>) -> (i64, i64) {
    match (x, y, m, n) {
        (Some(x), Some(y), Some(m), Some(n))
            if x.len() == y.len() && m.len() == x.len() && n.len() == x.len() =>
        {
            kernel::dot2(x, y, m, n)
        }
        _ => (0, 0),
    }
}

/// The sums of `x[t] * y[t] + m[t] * n[t] + m[w + t] * n[w + t]` for `t < w`, the length of `x`
/// and `y` ([`kernel::dot3`]): low parts, high parts. Zeros if a slice is missing or the
/// lengths do not fit.
#[inline(always)]
fn dot3(x: Option<&[f64]>, y: Option<&[f64]>, m: Option<&[f64]>, n: Option<&[f64]>) -> (i64, i64) {
    match (x, y, m, n) {
        (Some(x), Some(y), Some(m), Some(n))
            if y.len() == x.len() && m.len() == 2 * x.len() && n.len() == m.len() =>
        {
            kernel::dot3(x, y, m, n)
        }
        _ => (0, 0),
    }
}

/// `a * b` for `a, b < 2^50` as its low 50 bits and the rest, in 64-bit arithmetic (a `u128`
/// product is a call into compiler-builtins on wasm32).
#[inline(always)]
pub(super) fn mul_split(a: u64, b: u64) -> (u64, u64) {
    const HALF: u32 = LIMB_BITS / 2;
    const HALF_MASK: u64 = (1 << HALF) - 1;
    let (a1, a0) = (a >> HALF, a & HALF_MASK);
    let (b1, b0) = (b >> HALF, b & HALF_MASK);
    let middle = a1 * b0 + a0 * b1;
    let low = a0 * b0 + ((middle & HALF_MASK) << HALF);
    (low & MASK, a1 * b1 + (middle >> HALF) + (low >> LIMB_BITS))
}

/// The dot products in `u128`, one product at a time: what every target but wasm32 with
/// relaxed SIMD runs, and what the tests compare the SIMD kernel with.
#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "relaxed-simd"),
    allow(dead_code)
)]
pub(super) mod portable {
    use super::{LIMB_BITS, MASK};

    /// `(sum of low parts, sum of high parts)` of `x[t] * y[t]`, split at bit 50.
    #[inline(always)]
    pub(in super::super) fn dot(x: &[f64], y: &[f64]) -> (i64, i64) {
        let mut low = 0i64;
        let mut high = 0i64;
        for (&a, &b) in x.iter().zip(y) {
            let product = u128::from(a as u64) * u128::from(b as u64);
            low += (product as u64 & MASK) as i64;
            high += (product >> LIMB_BITS) as i64;
        }
        (low, high)
    }

    /// `a * b` for limbs `a, b` (below 2^50, as doubles) as `high * 2^50 + low`.
    #[inline(always)]
    pub(in super::super) fn split(a: f64, b: f64) -> (i64, i64) {
        let (low, high) = super::mul_split(a as u64, b as u64);
        (low as i64, high as i64)
    }

    /// `dot(x, y)` plus `dot(m, n)` (`m` and `n` twice as long as `x`).
    #[inline(always)]
    pub(in super::super) fn dot3(x: &[f64], y: &[f64], m: &[f64], n: &[f64]) -> (i64, i64) {
        dot2(x, y, m, n)
    }

    /// `dot(x, y)` plus `dot(m, n)`.
    #[inline(always)]
    pub(in super::super) fn dot2(x: &[f64], y: &[f64], m: &[f64], n: &[f64]) -> (i64, i64) {
        let (low, high) = dot(x, y);
        let (more_low, more_high) = dot(m, n);
        (low + more_low, high + more_high)
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
pub(super) use portable as kernel;

/// The dot products with relaxed SIMD: two products per pair of `f64x2.relaxed_madd`.
#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
pub(super) mod kernel {
    use core::arch::wasm32::{
        f64x2, f64x2_relaxed_madd, f64x2_splat, f64x2_sub, u64x2_add, u64x2_extract_lane,
        u64x2_splat, v128,
    };

    /// 2^102: adding a product below 2^100 to it rounds the product to a multiple of 2^50.
    const HIGH_BASE: f64 = f64::from_bits((1023 + 102) << 52);
    /// 2^102 + 1.5 * 2^52 (exactly representable: 52 significant bits).
    const LOW_ADDEND: f64 = f64::from_bits(((1023 + 102) << 52) | 0b110);
    /// The bits of [`HIGH_BASE`], in every high part.
    const HIGH_BIAS: u64 = HIGH_BASE.to_bits();
    /// The bits of 1.5 * 2^52, in every low part.
    const LOW_BIAS: u64 = ((1023 + 52) << 52) | (1 << 51);

    #[inline(always)]
    fn load(pair: &[f64]) -> v128 {
        match pair {
            &[a, b] => f64x2(a, b),
            _ => f64x2_splat(0.0),
        }
    }

    /// Adds the low and the high parts of the two products `x * y` (lane-wise) to `sums`.
    #[inline(always)]
    fn mul_add(sums: &mut [v128; 2], constants: [v128; 2], x: v128, y: v128) {
        let high = f64x2_relaxed_madd(x, y, constants[0]);
        let low = f64x2_relaxed_madd(x, y, f64x2_sub(constants[1], high));
        sums[0] = u64x2_add(sums[0], low);
        sums[1] = u64x2_add(sums[1], high);
    }

    /// [`HIGH_BASE`] and [`LOW_ADDEND`] in both lanes.
    #[inline(always)]
    fn constants() -> [v128; 2] {
        [f64x2_splat(HIGH_BASE), f64x2_splat(LOW_ADDEND)]
    }

    /// The sums' lanes added, less the constant bits of `count` products.
    #[inline(always)]
    fn totals(sums: [v128; 2], count: u64) -> (i64, i64) {
        let total = |sum: v128, bias: u64| {
            u64x2_extract_lane::<0>(sum)
                .wrapping_add(u64x2_extract_lane::<1>(sum))
                .wrapping_sub(count.wrapping_mul(bias)) as i64
        };
        (total(sums[0], LOW_BIAS), total(sums[1], HIGH_BIAS))
    }

    /// `(sum of L, sum of H)` over `x[t] * y[t] = H * 2^50 + L` (limbs below 2^50, `|L| <=
    /// 2^49`); a last odd element is ignored (callers pass even lengths).
    #[inline(always)]
    pub(in super::super) fn dot(x: &[f64], y: &[f64]) -> (i64, i64) {
        let mut sums = [u64x2_splat(0); 2];
        let constants = constants();
        let mut count = 0u64;
        for (x, y) in x.chunks_exact(2).zip(y.chunks_exact(2)) {
            mul_add(&mut sums, constants, load(x), load(y));
            count += 2;
        }
        totals(sums, count)
    }

    /// `dot(x, y)` plus `dot(m, n)` in one loop (all four of the same even length).
    #[inline(always)]
    pub(in super::super) fn dot2(x: &[f64], y: &[f64], m: &[f64], n: &[f64]) -> (i64, i64) {
        let constants = constants();
        let mut sums = [u64x2_splat(0); 2];
        let mut count = 0u64;
        let pairs = x.chunks_exact(2).zip(y.chunks_exact(2));
        for ((x, y), (m, n)) in pairs.zip(m.chunks_exact(2).zip(n.chunks_exact(2))) {
            mul_add(&mut sums, constants, load(x), load(y));
            mul_add(&mut sums, constants, load(m), load(n));
            count += 4;
        }
        totals(sums, count)
    }

    /// `dot(x, y) + dot(m, n)` for `m` and `n` twice as long as `x`, in one loop of `x`'s
    /// length: each step takes a pair of `x, y`, one of the first halves of `m, n` and one of
    /// their second halves.
    #[inline(always)]
    pub(in super::super) fn dot3(x: &[f64], y: &[f64], m: &[f64], n: &[f64]) -> (i64, i64) {
        let width = x.len();
        let (Some((m_low, m_high)), Some((n_low, n_high))) =
            (m.split_at_checked(width), n.split_at_checked(width))
        else {
            return (0, 0);
        };
        let constants = constants();
        let mut sums = [u64x2_splat(0); 2];
        let pairs = x.chunks_exact(2).zip(y.chunks_exact(2));
        let lower = m_low.chunks_exact(2).zip(n_low.chunks_exact(2));
        let upper = m_high.chunks_exact(2).zip(n_high.chunks_exact(2));
        for ((x, y), ((m, n), (m_high, n_high))) in pairs.zip(lower.zip(upper)) {
            mul_add(&mut sums, constants, load(x), load(y));
            mul_add(&mut sums, constants, load(m), load(n));
            mul_add(&mut sums, constants, load(m_high), load(n_high));
        }
        totals(sums, 3 * (width / 2 * 2) as u64)
    }

    /// `a * b` for limbs `a, b` (below 2^50, as doubles) as `high * 2^50 + low`, `|low| <=
    /// 2^49`: one lane of [`mul_add`]'s split.
    #[inline(always)]
    pub(in super::super) fn split(a: f64, b: f64) -> (i64, i64) {
        let mut sums = [u64x2_splat(0); 2];
        mul_add(&mut sums, constants(), f64x2_splat(a), f64x2_splat(b));
        let lane = |sum: v128, bias: u64| u64x2_extract_lane::<0>(sum).wrapping_sub(bias) as i64;
        (lane(sums[0], LOW_BIAS), lane(sums[1], HIGH_BIAS))
    }

    /// Whether `relaxed_madd` is fused here: `(2^50 - 1) * (2^50 - 3)` is `(2^50 - 4) * 2^50 +
    /// 3`, and an unfused multiply-add rounds the product to 53 bits first, losing the 3.
    pub(super) fn fused() -> bool {
        let a = std::hint::black_box([((1u64 << 50) - 1) as f64, 0.0]);
        let b = std::hint::black_box([((1u64 << 50) - 3) as f64, 0.0]);
        dot(&a, &b) == (3, (1 << 50) - 4)
    }
}

/// Little-endian `limbs` as doubles, with [`PAD`] zeros on each side.
fn padded(limbs: &[u64]) -> Vec<f64> {
    let mut out = vec![0.0; limbs.len() + 2 * PAD];
    for (slot, &limb) in out.iter_mut().skip(PAD).zip(limbs) {
        *slot = limb as f64;
    }
    out
}

/// [`padded`] with the limbs in reverse order.
fn padded_reversed(limbs: &[u64]) -> Vec<f64> {
    let mut out = vec![0.0; limbs.len() + 2 * PAD];
    for (slot, &limb) in out.iter_mut().skip(PAD).zip(limbs.iter().rev()) {
        *slot = limb as f64;
    }
    out
}

/// The value limbs of a [`padded`] buffer.
fn unpadded(buffer: &[f64]) -> &[f64] {
    buffer
        .get(PAD..buffer.len().saturating_sub(PAD))
        .unwrap_or(&[])
}

/// A [`padded`] buffer with its value limbs in reverse order.
fn reverse(buffer: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; buffer.len()];
    reverse_into(buffer, &mut out);
    out
}

/// Writes `buffer`'s value limbs into `out` (same length) in reverse order.
fn reverse_into(buffer: &[f64], out: &mut [f64]) {
    let limbs = unpadded(buffer);
    let end = out.len().saturating_sub(PAD);
    if let Some(slots) = out.get_mut(PAD..end) {
        for (slot, &limb) in slots.iter_mut().zip(limbs.iter().rev()) {
            *slot = limb;
        }
    }
}

/// A limb held as a double (an integer below 2^53) as an integer: adding 2^52 puts it in the
/// binade where the bits count units. Cheaper in V8 than `as u64`, which checks the range.
#[inline(always)]
fn limb_value(limb: f64) -> u64 {
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    (limb + TWO_52).to_bits() - TWO_52.to_bits()
}

/// Writes twice `buffer`'s value limbs into `out` (same length) in reverse order: each below
/// 2^51, exact as a double.
fn doubled_reverse_into(buffer: &[f64], out: &mut [f64]) {
    let limbs = unpadded(buffer);
    let end = out.len().saturating_sub(PAD);
    if let Some(slots) = out.get_mut(PAD..end) {
        for (slot, &limb) in slots.iter_mut().zip(limbs.iter().rev()) {
            *slot = 2.0 * limb;
        }
    }
}

/// Big-endian bytes to `k` little-endian 50-bit limbs; bits beyond `50 * k` are dropped.
pub(super) fn be_bytes_to_limbs(bytes: &[u8], k: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(k);
    // At most 49 + 8 bits wait in `pending`.
    let (mut pending, mut bits) = (0u64, 0u32);
    for &byte in bytes.iter().rev() {
        pending |= u64::from(byte) << bits;
        bits += 8;
        if bits >= LIMB_BITS {
            out.push(pending & MASK);
            pending >>= LIMB_BITS;
            bits -= LIMB_BITS;
        }
    }
    out.push(pending);
    out.resize(k, 0);
    out
}

/// Little-endian 50-bit limbs to exactly `len` big-endian bytes (the value must fit).
pub(super) fn limbs_to_be_bytes(limbs: &[u64], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut slots = out.iter_mut().rev();
    // At most 7 + 50 bits wait in `pending`.
    let (mut pending, mut bits) = (0u64, 0u32);
    for &limb in limbs {
        pending |= limb << bits;
        bits += LIMB_BITS;
        while bits >= 8 {
            match slots.next() {
                Some(slot) => *slot = pending as u8,
                None => return out,
            }
            pending >>= 8;
            bits -= 8;
        }
    }
    if let Some(slot) = slots.next() {
        *slot = pending as u8;
    }
    out
}

/// [`super::less_than`] with `a`'s limbs held as doubles.
fn less_than_f64(a: &[f64], b: &[u64]) -> bool {
    for (&x, &y) in a.iter().rev().zip(b.iter().rev()) {
        let x = x as u64;
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a -= b` modulo `2^(50 * len)`, `a`'s limbs held as doubles.
fn sub_in_place(a: &mut [f64], b: &[u64]) {
    let mut borrow = 0u64;
    for (x, &y) in a.iter_mut().zip(b) {
        let diff = (*x as u64).wrapping_sub(y).wrapping_sub(borrow);
        *x = (diff & MASK) as f64;
        borrow = diff >> 63;
    }
}

/// `-n0^-1 mod 2^64` for odd `n0`, by Newton iteration (each step doubles the correct bits).
pub(super) fn neg_inverse_mod_2_64(n0: u64) -> u64 {
    // n0 * n0 == 1 mod 8, so n0 is its own inverse to 3 bits.
    let mut inverse = n0;
    for _ in 0..5 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(n0.wrapping_mul(inverse)));
    }
    inverse.wrapping_neg()
}

/// `2^exponent mod n` for an odd modulus of `bits` bits, by doubling from `2^(bits - 1) < n`;
/// key-load time only (about 4,100 doublings of 41 limbs for a 2048-bit key).
pub(super) fn pow2_mod(n: &[u64], bits: usize, exponent: usize) -> Vec<u64> {
    let limb_bits = LIMB_BITS as usize;
    let mut x = vec![0u64; n.len()];
    let top = bits.saturating_sub(1);
    if let Some(limb) = x.get_mut(top / limb_bits) {
        *limb = 1 << (top % limb_bits);
    }
    for _ in top..exponent {
        // x = 2x mod n, with x < n before and after; 2x may carry out of the top limb.
        let mut carry = 0u64;
        for limb in x.iter_mut() {
            let doubled = (*limb << 1) | carry;
            *limb = doubled & MASK;
            carry = doubled >> LIMB_BITS;
        }
        if carry != 0 || !super::less_than(&x, n) {
            let mut borrow = 0u64;
            for (limb, &y) in x.iter_mut().zip(n) {
                let diff = limb.wrapping_sub(y).wrapping_sub(borrow);
                *limb = diff & MASK;
                borrow = diff >> 63;
            }
        }
    }
    x
}
