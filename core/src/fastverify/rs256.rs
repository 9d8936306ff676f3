//! RS256 (RSASSA-PKCS1-v1_5 with SHA-256) verification with per-key Montgomery constants.
//!
//! With the usual public exponent 65537 a verify is 16 modular squarings and one multiplication.
//! This file does them with 28-bit limbs in 32-bit words, so a 64-bit accumulator takes a whole
//! column of 56-bit products without carries (128-bit arithmetic is emulated on wasm32), with
//! `-n^-1 mod 2^28` and `R^2 mod n` computed once per key. Every column sum is a dot product of
//! two contiguous slices (one operand stored reversed); with WebAssembly SIMD it takes four
//! products per two `i64x2.extmul` instructions (`dot` below).
//! The padding is checked by building the expected encoded message and comparing whole blocks
//! (RFC 8017 section 8.2.2), never by parsing it. Only public data is handled, so the code is
//! not constant-time; nothing here may be reused for decryption or signing.

use sha2::{Digest, Sha256};

/// Smallest accepted modulus, in bits: shorter RSA keys are too weak for JWS (RFC 7518 3.3).
pub const MIN_MODULUS_BITS: usize = 2048;
/// Largest accepted modulus, in bits: bounds per-token CPU for hostile key sets, and matches
/// `rsa::RsaPublicKey::MAX_SIZE`, which jwt-compact's JWK keys go through.
pub const MAX_MODULUS_BITS: usize = 4096;

/// DER prefix of `DigestInfo { sha256, NULL }` (RFC 8017 section 9.2, note 1).
const SHA256_DIGEST_INFO_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Why an RSA public key could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rs256KeyError {
    /// The modulus is shorter or longer than this verifier accepts.
    #[error("rsa modulus has {bits} bits, expected {MIN_MODULUS_BITS}..={MAX_MODULUS_BITS}")]
    ModulusSize {
        /// Bit length of the rejected modulus.
        bits: usize,
    },
    /// The modulus is even, so it cannot be an RSA modulus.
    #[error("rsa modulus is even")]
    EvenModulus,
    /// The exponent is even, 1, zero, or wider than 64 bits.
    #[error("rsa public exponent is unsupported ({len} bytes): must be odd, > 1, <= 64 bits")]
    Exponent {
        /// Length in bytes of the exponent after stripping leading zeros.
        len: usize,
    },
}

/// Bits per limb: products of two limbs are below 2^56, so a u64 holds the sum of 256 of them.
const LIMB_BITS: u32 = 28;
/// Mask of one limb's bits.
const LIMB_MASK: u32 = (1 << LIMB_BITS) - 1;

/// Verifies RS256 signatures for one RSA public key.
///
/// Accept/reject decisions match `rsa::RsaPublicKey::verify(Pkcs1v15Sign::new::<Sha256>(), ..)`:
/// the signature must be exactly as long as the modulus, below the modulus, and decode to the
/// one valid encoding of the digest (DigestInfo with explicit NULL parameters).
#[derive(Clone)]
pub struct Rs256Verifier {
    /// Modulus as little-endian 28-bit limbs (`k` of them, enough for its bit length).
    n: Vec<u32>,
    /// The modulus' limbs in reverse order (most significant first), [`padded`], so that the
    /// column sums of the Montgomery reduction are dot products of two slices read forwards.
    n_reversed: Vec<u32>,
    /// `-n^-1 mod 2^28`, the Montgomery reduction factor.
    n0_inv: u32,
    /// `R^2 mod n` with `R = 2^(28 * k)`, to enter the Montgomery domain.
    r_squared: Vec<u32>,
    /// `R^2 mod n` reversed and [`padded`], the multiplicand that enters the Montgomery domain.
    r_squared_reversed: Vec<u32>,
    /// The public exponent.
    e: u64,
    /// Modulus length in bytes (`k` in RFC 8017): the required signature length.
    modulus_len: usize,
    /// Bit length of the modulus.
    modulus_bits: usize,
    /// The modulus' constants for 50-bit limbs ([`wide`]), which verify where the host has a
    /// fused multiply-add.
    wide: wide::Wide,
}

impl std::fmt::Debug for Rs256Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rs256Verifier")
            .field("modulus_bits", &self.modulus_bits())
            .field("e", &self.e)
            .finish()
    }
}

impl Rs256Verifier {
    /// Prepares a verifier from the big-endian modulus and exponent (JWK `n` and `e`).
    pub fn new(n: &[u8], e: &[u8]) -> Result<Self, Rs256KeyError> {
        let n = strip_leading_zeros(n);
        let bits = bit_length(n);
        if !(MIN_MODULUS_BITS..=MAX_MODULUS_BITS).contains(&bits) {
            return Err(Rs256KeyError::ModulusSize { bits });
        }
        if n.last().is_none_or(|byte| byte & 1 == 0) {
            return Err(Rs256KeyError::EvenModulus);
        }
        let e_bytes = strip_leading_zeros(e);
        let exponent_error = Rs256KeyError::Exponent { len: e_bytes.len() };
        if e_bytes.len() > 8 {
            return Err(exponent_error);
        }
        let e = e_bytes
            .iter()
            .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        if e < 3 || e & 1 == 0 {
            return Err(exponent_error);
        }

        let limbs = be_bytes_to_limbs(n, bits.div_ceil(LIMB_BITS as usize));
        let n0_inv = neg_inverse_mod_2_32(limbs.first().copied().unwrap_or(1)) & LIMB_MASK;
        let r_squared = r_squared_mod(&limbs, bits);
        let k = limbs.len();
        let n_reversed = padded_reversed(&limbs, k);
        let r_squared_reversed = padded_reversed(&r_squared, k);
        Ok(Self {
            n: limbs,
            n_reversed,
            n0_inv,
            r_squared,
            r_squared_reversed,
            e,
            modulus_len: n.len(),
            modulus_bits: bits,
            wide: wide::Wide::new(n, bits),
        })
    }

    /// Bit length of the modulus.
    pub fn modulus_bits(&self) -> usize {
        self.modulus_bits
    }

    /// Heap bytes held by this verifier.
    pub fn heap_bytes(&self) -> usize {
        (self.n.capacity()
            + self.n_reversed.capacity()
            + self.r_squared.capacity()
            + self.r_squared_reversed.capacity())
            * 4
            + self.wide.heap_bytes()
    }

    /// Checks a JWS RS256 signature over `signing_input`.
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(signing_input).into();
        self.verify_prehash(&digest, signature)
    }

    /// Checks a signature over an already computed SHA-256 digest of the signing input.
    pub fn verify_prehash(&self, digest: &[u8; 32], signature: &[u8]) -> bool {
        // RFC 8017 8.2.2 step 1: the signature is exactly k octets.
        if signature.len() != self.modulus_len {
            return false;
        }
        let encoded = if wide::available() {
            self.wide.public_op(signature, self.e)
        } else {
            self.public_op(signature)
        };
        let Some(encoded) = encoded else {
            return false;
        };
        let Some(expected) = self.expected_encoding(digest) else {
            return false;
        };
        // Public data: an early-exit comparison leaks nothing secret.
        encoded == expected
    }

    /// RSAVP1: `s^e mod n` as a k-octet big-endian block, or `None` if `s >= n`.
    fn public_op(&self, signature: &[u8]) -> Option<Vec<u8>> {
        let k = self.n.len();
        // The signature has exactly modulus_len bytes (checked by the caller, and here), so it
        // fits k limbs and its value is kept whole.
        if signature.len() != self.modulus_len {
            return None;
        }
        let s = be_bytes_to_limbs(signature, k);
        if !less_than(&s, &self.n) {
            return None;
        }
        let mut work = Workspace::new(k);
        // s * R mod n: the Montgomery form of s, kept reversed as the fixed multiplicand.
        let mut s_mont = padded(&[], k);
        self.mont_mul(
            &padded(&s, k),
            &self.r_squared_reversed,
            &mut s_mont,
            &mut work,
        );
        let s_mont_reversed = padded_reversed(unpadded(&s_mont, k), k);
        let mut acc = s_mont;
        let mut tmp = padded(&[], k);
        let top_bit = 63 - self.e.leading_zeros();
        // Left-to-right square-and-multiply over the bits between the top and the lowest one;
        // for 65537 that is 15 squarings and no multiplication (the 16th squaring is below).
        for bit in (1..top_bit).rev() {
            self.mont_sqr(&acc, &mut tmp, &mut work);
            std::mem::swap(&mut acc, &mut tmp);
            if (self.e >> bit) & 1 == 1 {
                self.mont_mul(&acc, &s_mont_reversed, &mut tmp, &mut work);
                std::mem::swap(&mut acc, &mut tmp);
            }
        }
        // Lowest bit (always 1, e is odd): square, then multiply by plain s, since
        // MontMul(x*R, s) = x*s mod n, which also leaves the Montgomery domain.
        self.mont_sqr(&acc, &mut tmp, &mut work);
        self.mont_mul(&tmp, &padded_reversed(&s, k), &mut acc, &mut work);
        Some(limbs_to_be_bytes(unpadded(&acc, k), self.modulus_len))
    }

    /// EMSA-PKCS1-v1_5 encoding of the digest: `00 01 FF..FF 00 || DigestInfo || H`.
    fn expected_encoding(&self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        let t_len = SHA256_DIGEST_INFO_PREFIX.len() + digest.len();
        // At least 8 octets of 0xFF padding (RFC 8017 9.2 step 3).
        let padding_len = self.modulus_len.checked_sub(t_len + 3)?;
        if padding_len < 8 {
            return None;
        }
        let mut encoded = Vec::with_capacity(self.modulus_len);
        encoded.extend_from_slice(&[0x00, 0x01]);
        encoded.resize(2 + padding_len, 0xff);
        encoded.push(0x00);
        encoded.extend_from_slice(&SHA256_DIGEST_INFO_PREFIX);
        encoded.extend_from_slice(digest);
        Some(encoded)
    }

    /// Montgomery multiplication `out = a * b * R^-1 mod n` for `a, b < n`, with `b` given as
    /// its limbs in reverse order. Operands and result are [`padded`].
    fn mont_mul(&self, a: &[u32], b_reversed: &[u32], out: &mut [u32], work: &mut Workspace) {
        self.mont_product(a, b_reversed, &mut work.factors, out);
    }

    /// Montgomery squaring `out = a^2 * R^-1 mod n` for `a < n`.
    fn mont_sqr(&self, a: &[u32], out: &mut [u32], work: &mut Workspace) {
        for (slot, &limb) in work.reversed.iter_mut().zip(a.iter().rev()) {
            *slot = limb;
        }
        if self.n.len() % 2 == 0 {
            self.mont_square(a, &work.reversed, &mut work.factors, out);
        } else {
            // An odd number of limbs (4096-bit moduli have 147) puts a pair of columns across
            // the middle, which [`Self::mont_square`] does not take: square as a product.
            self.mont_product(a, &work.reversed, &mut work.factors, out);
        }
    }

    /// Body of [`Self::mont_sqr`] for an even number of limbs (2048 and 3072 bits), with
    /// `a_reversed` and the reduction factors' buffer `m` ([`padded`]).
    ///
    /// As [`Self::mont_product`], two columns a pass, but each cross product `a_j * a_l`
    /// (`j < l`) is summed once and doubled, and the square `a_(i/2)^2` added: a quarter fewer
    /// limb products. Column `i`'s cross pairs are `j < i - j`, from the lowest `j` with a
    /// partner below `k`; the pass for columns `i` and `i + 1` takes `j < ceil(i / 2)`, widened
    /// downwards to a multiple of four (below, either `a_j` is leading padding or its partner
    /// lies past the top limb, in `a_reversed`'s padding), and column `i + 1` gets its one
    /// further pair, `a_(i/2) * a_(i/2 + 1)` for even `i`, afterwards. A second pass sums the
    /// reduction of both columns.
    fn mont_square(&self, a: &[u32], a_reversed: &[u32], m: &mut [u32], out: &mut [u32]) {
        let n_reversed = self.n_reversed.as_slice();
        let k = self.n.len();
        let n0 = u64::from(self.n.first().copied().unwrap_or(0));
        let n1 = u64::from(self.n.get(1).copied().unwrap_or(0));
        m.fill(0);
        let limb = |j: usize| u64::from(a.get(PAD + j).copied().unwrap_or(0));
        let mut carry = 0u64;
        for i in (0..2 * k).step_by(2) {
            let mid = i.div_ceil(2);
            let start = (i + 1).saturating_sub(k);
            let width = (mid - start.min(mid)).next_multiple_of(4);
            // Column i's partner of pair j is at a_reversed[PAD + k - 1 - i + j]; column i + 1's
            // one lower. Both stay at or above index 0: j >= start - 3, and start >= i + 1 - k.
            let from = (PAD + mid) - width;
            let partners = (PAD + k + mid) - (2 + i + width);
            let [cross, cross_next] = dot1x2(
                a.get(from..from + width),
                a_reversed.get(partners..partners + width + 1),
            );
            // i is even: column i has the square a_(i/2)^2, column i + 1 the further pair.
            let half = limb(i / 2);
            let products = 2 * cross + half * half;
            let products_next = 2 * (cross_next + half * limb(i / 2 + 1));
            if i < k {
                let width = (i + 2).next_multiple_of(4);
                let offset = PAD + k - 2 - i;
                let [reduction, reduction_next] = dot1x2(
                    m.get(PAD..PAD + width),
                    n_reversed.get(offset..offset + width + 1),
                );
                let (m_i, c) = reduce(m, self.n0_inv, n0, i, products, reduction, carry);
                // Column i + 1 lacks m_i * n_1: m_i was still zero in the pass.
                let reduction_next = reduction_next + m_i * n1;
                (_, carry) = reduce(m, self.n0_inv, n0, i + 1, products_next, reduction_next, c);
            } else {
                let start = PAD + i + 1 - k;
                let width = (2 * k - 1 - i).next_multiple_of(4);
                let [reduction, reduction_next] = dot1x2(
                    m.get(start..start + width),
                    n_reversed.get(PAD - 1..PAD + width),
                );
                carry = output(out, k, i, products, reduction, carry);
                carry = output(out, k, i + 1, products_next, reduction_next, carry);
            }
        }
        self.reduce_below_n(out, carry);
    }

    /// Body of [`Self::mont_mul`], with the reduction factors' buffer `m` ([`padded`]).
    ///
    /// Product scanning: the 2k-limb result column by column, with the Montgomery reduction
    /// interleaved. Column `i` adds `a_j * b_(i-j)` and `m_j * n_(i-j)`; with `b` and `n` stored
    /// reversed, both sums are dot products of two forward slices. Two neighbouring columns are
    /// summed in one pass ([`dot2x2`]): they read the same limbs of `a` and `m` and the reversed
    /// operands one limb apart, so each limb of `a` and `m` is loaded once for both, and the work
    /// around a pass is shared by two columns. The pass runs before `m_i` is chosen, so column
    /// `i + 1` gets `m_i * n_1` afterwards. Every buffer has [`PAD`] zero limbs on both sides, so a
    /// range can be widened to a multiple of four pairs: each added pair has a zero factor (a
    /// padding limb, or a reduction factor `m_j` not chosen yet, which is zero). The two sums are
    /// kept apart (each below `(k + 1) * 2^56 < 2^64` for k <= 147 limbs, 4096 bits) and split
    /// into 28-bit halves before they meet the carry. The columns below `k` and those above are
    /// two loops, each with its own simple ranges. In V8 (Node, callgrind, per RS256-2048 verify)
    /// this took the products from 1.27M instructions to 1.08M (the two loops, squarings as plain
    /// products) and 0.95M (two columns a pass); squarings by [`Self::mont_square`], 0.91M. The
    /// result is below `2n`.
    fn mont_product(&self, a: &[u32], b_reversed: &[u32], m: &mut [u32], out: &mut [u32]) {
        let n_reversed = self.n_reversed.as_slice();
        let k = self.n.len();
        let n0 = u64::from(self.n.first().copied().unwrap_or(0));
        let n1 = u64::from(self.n.get(1).copied().unwrap_or(0));
        m.fill(0);
        let mut carry = 0u64;
        // Columns 0..k, two at a time: pairs (j, i - j) for j in 0..=i, widened to a multiple of
        // four into the trailing padding of the reversed operands (and factors m_j not chosen
        // yet, zero). Column i + 1 reads the reversed operands one limb lower than column i.
        let mut i = 0;
        while i + 1 < k {
            let width = (i + 2).next_multiple_of(4);
            let offset = PAD + k - 2 - i;
            let [p, r, p_next, r_next] = dot2x2(
                a.get(PAD..PAD + width),
                b_reversed.get(offset..offset + width + 1),
                m.get(PAD..PAD + width),
                n_reversed.get(offset..offset + width + 1),
            );
            let (m_i, c) = reduce(m, self.n0_inv, n0, i, p, r, carry);
            // Column i + 1 lacks m_i * n_1: m_i was still zero in the pass.
            (_, carry) = reduce(m, self.n0_inv, n0, i + 1, p_next, r_next + m_i * n1, c);
            i += 2;
        }
        if i < k {
            let width = (i + 1).next_multiple_of(4);
            let offset = PAD + k - 1 - i;
            let (p, r) = dot2(
                a.get(PAD..PAD + width),
                b_reversed.get(offset..offset + width),
                m.get(PAD..PAD + width),
                n_reversed.get(offset..offset + width),
            );
            (_, carry) = reduce(m, self.n0_inv, n0, i, p, r, carry);
        }
        // Columns k..2k, the result's limbs (column 2k - 1 has no pair: what carries into it
        // is the top limb): pairs (j, i - j) for j in i-k+1..k, widened into the trailing
        // padding of `a` and of the factors. Two at a time after the first when k is odd.
        let mut i = k;
        if k % 2 == 1 {
            let start = PAD + 1;
            let width = (k - 1).next_multiple_of(4);
            let (p, r) = dot2(
                a.get(start..start + width),
                b_reversed.get(PAD..PAD + width),
                m.get(start..start + width),
                n_reversed.get(PAD..PAD + width),
            );
            carry = output(out, k, i, p, r, carry);
            i += 1;
        }
        while i < 2 * k {
            let start = PAD + i + 1 - k;
            let width = (2 * k - 1 - i).next_multiple_of(4);
            let [p, r, p_next, r_next] = dot2x2(
                a.get(start..start + width),
                b_reversed.get(PAD - 1..PAD + width),
                m.get(start..start + width),
                n_reversed.get(PAD - 1..PAD + width),
            );
            carry = output(out, k, i, p, r, carry);
            carry = output(out, k, i + 1, p_next, r_next, carry);
            i += 2;
        }
        self.reduce_below_n(out, carry);
    }

    /// The last step of a Montgomery product: the result in `out` (with `carry` as an extra top
    /// limb) is below `2n`; subtracts `n` once if it is not below `n`.
    fn reduce_below_n(&self, out: &mut [u32], carry: u64) {
        if let Some(result) = out.get_mut(PAD..PAD + self.n.len()) {
            if carry != 0 || !less_than(result, &self.n) {
                sub_in_place(result, &self.n);
            }
        }
    }
}

/// A column's two sums and the carry into it: its low limb (below 2^30) and what carries on.
#[inline(always)]
fn split(products: u64, reduction: u64, carry: u64) -> (u64, u64) {
    let mask = u64::from(LIMB_MASK);
    let low = (products & mask) + (reduction & mask) + (carry & mask);
    let high = (products >> LIMB_BITS) + (reduction >> LIMB_BITS) + (carry >> LIMB_BITS);
    (low, high)
}

/// Column `i < k` of a Montgomery product: chooses `m_i` (stored in `m`) so that the column's
/// low limb becomes zero, and returns `m_i` and the carry out of the column without it.
#[inline(always)]
fn reduce(
    m: &mut [u32],
    n0_inv: u32,
    n0: u64,
    i: usize,
    products: u64,
    reduction: u64,
    carry: u64,
) -> (u64, u64) {
    let (low, high) = split(products, reduction, carry);
    let m_i = (low as u32).wrapping_mul(n0_inv) & LIMB_MASK;
    if let Some(slot) = m.get_mut(PAD + i) {
        *slot = m_i;
    }
    (
        u64::from(m_i),
        high + ((low + u64::from(m_i) * n0) >> LIMB_BITS),
    )
}

/// Column `i >= k` of a Montgomery product: writes its low limb to the result's limb `i - k`
/// and returns the carry out.
#[inline(always)]
fn output(out: &mut [u32], k: usize, i: usize, products: u64, reduction: u64, carry: u64) -> u64 {
    let (low, high) = split(products, reduction, carry);
    if let Some(slot) = out.get_mut(PAD + i - k) {
        *slot = low as u32 & LIMB_MASK;
    }
    high + (low >> LIMB_BITS)
}

/// Zero limbs on each side of every Montgomery operand: ranges of pairs are widened to a
/// multiple of four (one SIMD step) into them.
const PAD: usize = 4;

/// `limbs` (at most `k`) zero-extended to `k` limbs with [`PAD`] zero limbs on each side.
fn padded(limbs: &[u32], k: usize) -> Vec<u32> {
    let mut out = vec![0u32; k + 2 * PAD];
    for (slot, &limb) in out.iter_mut().skip(PAD).zip(limbs.iter().take(k)) {
        *slot = limb;
    }
    out
}

/// [`padded`] of the `k` limbs in reverse order.
fn padded_reversed(limbs: &[u32], k: usize) -> Vec<u32> {
    let mut out = vec![0u32; k + 2 * PAD];
    for (slot, &limb) in out.iter_mut().skip(PAD).zip(limbs.iter().take(k).rev()) {
        *slot = limb;
    }
    out
}

/// The `k` value limbs of a [`padded`] buffer.
fn unpadded(limbs: &[u32], k: usize) -> &[u32] {
    limbs.get(PAD..PAD + k).unwrap_or(&[])
}

/// Scratch space for one exponentiation, so the Montgomery products do not allocate.
struct Workspace {
    /// The reduction factors `m_j` of the product under way, [`padded`].
    factors: Vec<u32>,
    /// The squared operand's limbs in reverse order, [`padded`].
    reversed: Vec<u32>,
}

impl Workspace {
    fn new(k: usize) -> Self {
        Self {
            factors: padded(&[], k),
            reversed: padded(&[], k),
        }
    }
}

/// `sum(x[t] * y[t])` over two slices of the same length, a multiple of four, of limbs below
/// 2^28, at most 256 pairs (so the sum fits a u64); zero if either slice is missing.
#[inline(always)]
fn dot(x: Option<&[u32]>, y: Option<&[u32]>) -> u64 {
    match (x, y) {
        (Some(x), Some(y)) => kernel::dot(x, y),
        _ => 0,
    }
}

/// [`dot`] of `x, y` and of `m, n` in one pass (all four slices of the same length).
#[inline(always)]
fn dot2(x: Option<&[u32]>, y: Option<&[u32]>, m: Option<&[u32]>, n: Option<&[u32]>) -> (u64, u64) {
    match (x, y, m, n) {
        (Some(x), Some(y), Some(m), Some(n)) => kernel::dot2(x, y, m, n),
        _ => (dot(x, y), dot(m, n)),
    }
}

/// The sums of two neighbouring columns in one pass: [`dot2`] of `x, y[1..], m, n[1..]` and of
/// `x, y[..len], m, n[..len]` (column `i` and column `i + 1`, whose reversed operands start one
/// limb lower), as `[products, reduction, next products, next reduction]`; `y` and `n` are one
/// limb longer than `x` and `m`. Zeros if a slice is missing or of the wrong length.
#[inline(always)]
fn dot2x2(x: Option<&[u32]>, y: Option<&[u32]>, m: Option<&[u32]>, n: Option<&[u32]>) -> [u64; 4] {
    match (x, y, m, n) {
        (Some(x), Some(y), Some(m), Some(n))
            if y.len() == x.len() + 1 && m.len() == x.len() && n.len() == y.len() =>
        {
            kernel::dot2x2(x, y, m, n)
        }
        _ => [0; 4],
    }
}

/// [`dot`] of `x, y[1..]` and of `x, y[..len]` in one pass (`y` one limb longer than `x`).
/// Zeros if a slice is missing or of the wrong length.
#[inline(always)]
fn dot1x2(x: Option<&[u32]>, y: Option<&[u32]>) -> [u64; 2] {
    match (x, y) {
        (Some(x), Some(y)) if y.len() == x.len() + 1 => kernel::dot1x2(x, y),
        _ => [0; 2],
    }
}

/// The portable dot products, one product at a time: what every target but wasm32 with
/// simd128 runs, and what the tests compare the SIMD kernel with.
#[cfg_attr(
    all(target_arch = "wasm32", target_feature = "simd128"),
    allow(dead_code)
)]
mod portable {
    /// `sum(x[t] * y[t])`.
    #[inline(always)]
    pub(super) fn dot(x: &[u32], y: &[u32]) -> u64 {
        x.iter()
            .zip(y)
            .map(|(&a, &b)| u64::from(a) * u64::from(b))
            .sum()
    }

    /// `(dot(x, y), dot(m, n))`.
    #[inline(always)]
    pub(super) fn dot2(x: &[u32], y: &[u32], m: &[u32], n: &[u32]) -> (u64, u64) {
        (dot(x, y), dot(m, n))
    }

    /// `dot(x, y[1..])` and `dot(x, y[..len])`.
    #[inline(always)]
    pub(super) fn dot1x2(x: &[u32], y: &[u32]) -> [u64; 2] {
        let len = x.len();
        [
            dot(x, y.get(1..).unwrap_or(&[])),
            dot(x, y.get(..len).unwrap_or(&[])),
        ]
    }

    /// `dot2(x, y[1..], m, n[1..])` and `dot2(x, y[..len], m, n[..len])`.
    #[inline(always)]
    pub(super) fn dot2x2(x: &[u32], y: &[u32], m: &[u32], n: &[u32]) -> [u64; 4] {
        let len = x.len();
        let this = dot2(x, y.get(1..).unwrap_or(&[]), m, n.get(1..).unwrap_or(&[]));
        let next = dot2(
            x,
            y.get(..len).unwrap_or(&[]),
            m,
            n.get(..len).unwrap_or(&[]),
        );
        [this.0, this.1, next.0, next.1]
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
use portable as kernel;

/// The dot products with WebAssembly SIMD: four products per two `i64x2.extmul` instructions
/// (32x32->64-bit, two lanes each), for slices whose length is a multiple of four.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod kernel {
    use super::LIMB_MASK;
    use core::arch::wasm32::{
        u32x4, u32x4_splat, u64x2_add, u64x2_extmul_high_u32x4, u64x2_extmul_low_u32x4,
        u64x2_extract_lane, u64x2_splat, v128, v128_and,
    };

    /// Four limbs as a vector. Masking with the limb mask changes no value, but without it
    /// LLVM folds the loads into extending loads and emits i64x2.mul, which V8 emulates with
    /// several instructions.
    #[inline(always)]
    fn load(limbs: &[u32]) -> v128 {
        match limbs {
            &[a, b, c, d] => v128_and(u32x4(a, b, c, d), u32x4_splat(LIMB_MASK)),
            _ => u64x2_splat(0),
        }
    }

    /// `sum + x * y` lane-wise over the four 32-bit lanes, as two 64-bit lanes.
    #[inline(always)]
    fn mul_add(sum: v128, x: v128, y: v128) -> v128 {
        let sum = u64x2_add(sum, u64x2_extmul_low_u32x4(x, y));
        u64x2_add(sum, u64x2_extmul_high_u32x4(x, y))
    }

    fn total(sum: v128) -> u64 {
        u64x2_extract_lane::<0>(sum) + u64x2_extract_lane::<1>(sum)
    }

    /// `sum(x[t] * y[t])`; a tail shorter than four is ignored (callers pass multiples of four).
    #[inline(always)]
    pub(super) fn dot(x: &[u32], y: &[u32]) -> u64 {
        let mut sum = u64x2_splat(0);
        for (x, y) in x.chunks_exact(4).zip(y.chunks_exact(4)) {
            sum = mul_add(sum, load(x), load(y));
        }
        total(sum)
    }

    /// `(dot(x, y), dot(m, n))` in one loop.
    #[inline(always)]
    pub(super) fn dot2(x: &[u32], y: &[u32], m: &[u32], n: &[u32]) -> (u64, u64) {
        let mut products = u64x2_splat(0);
        let mut reduction = u64x2_splat(0);
        let pairs = x.chunks_exact(4).zip(y.chunks_exact(4));
        for ((x, y), (m, n)) in pairs.zip(m.chunks_exact(4).zip(n.chunks_exact(4))) {
            products = mul_add(products, load(x), load(y));
            reduction = mul_add(reduction, load(m), load(n));
        }
        (total(products), total(reduction))
    }

    /// `dot(x, y[1..])` and `dot(x, y[..len])` in one loop: `x` is loaded once for both.
    #[inline(always)]
    pub(super) fn dot1x2(x: &[u32], y: &[u32]) -> [u64; 2] {
        let len = x.len();
        let (Some(y_this), Some(y_next)) = (y.get(1..), y.get(..len)) else {
            return [0; 2];
        };
        let mut sums = [u64x2_splat(0); 2];
        let pairs = y_this.chunks_exact(4).zip(y_next.chunks_exact(4));
        for (x, (y_this, y_next)) in x.chunks_exact(4).zip(pairs) {
            let x = load(x);
            sums[0] = mul_add(sums[0], x, load(y_this));
            sums[1] = mul_add(sums[1], x, load(y_next));
        }
        sums.map(total)
    }

    /// `dot2(x, y[1..], m, n[1..])` and `dot2(x, y[..len], m, n[..len])` in one loop: `x` and
    /// `m` are loaded once for both columns.
    #[inline(always)]
    pub(super) fn dot2x2(x: &[u32], y: &[u32], m: &[u32], n: &[u32]) -> [u64; 4] {
        let len = x.len();
        let (Some(y_this), Some(y_next), Some(n_this), Some(n_next)) =
            (y.get(1..), y.get(..len), n.get(1..), n.get(..len))
        else {
            return [0; 4];
        };
        let mut sums = [u64x2_splat(0); 4];
        let shared = x.chunks_exact(4).zip(m.chunks_exact(4));
        let this = y_this.chunks_exact(4).zip(n_this.chunks_exact(4));
        let next = y_next.chunks_exact(4).zip(n_next.chunks_exact(4));
        for ((x, m), ((y_this, n_this), (y_next, n_next))) in shared.zip(this.zip(next)) {
            let (x, m) = (load(x), load(m));
            sums[0] = mul_add(sums[0], x, load(y_this));
            sums[1] = mul_add(sums[1], m, load(n_this));
            sums[2] = mul_add(sums[2], x, load(y_next));
            sums[3] = mul_add(sums[3], m, load(n_next));
        }
        sums.map(total)
    }
}

/// `bytes` without its leading zero octets.
fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or(&[])
}

/// Bit length of a big-endian integer without leading zero octets.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.first() {
        Some(&top) => bytes.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

/// Big-endian bytes to `limbs` little-endian 28-bit limbs; bits beyond `28 * limbs` are dropped
/// (callers check lengths first).
fn be_bytes_to_limbs(bytes: &[u8], limbs: usize) -> Vec<u32> {
    let mut out = vec![0u32; limbs];
    for (i, &byte) in bytes.iter().rev().enumerate() {
        let bit = i * 8;
        let (limb, shift) = (bit / LIMB_BITS as usize, (bit % LIMB_BITS as usize) as u32);
        let value = u64::from(byte) << shift;
        if let Some(slot) = out.get_mut(limb) {
            *slot |= value as u32 & LIMB_MASK;
        }
        if let Some(slot) = out.get_mut(limb + 1) {
            *slot |= (value >> LIMB_BITS) as u32;
        }
    }
    out
}

/// Little-endian 28-bit limbs to exactly `len` big-endian bytes (the value must fit).
fn limbs_to_be_bytes(limbs: &[u32], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, byte) in out.iter_mut().rev().enumerate() {
        let bit = i * 8;
        let (limb, shift) = (bit / LIMB_BITS as usize, bit % LIMB_BITS as usize);
        let low = u64::from(limbs.get(limb).copied().unwrap_or(0));
        let high = u64::from(limbs.get(limb + 1).copied().unwrap_or(0));
        *byte = ((low | (high << LIMB_BITS)) >> shift) as u8;
    }
    out
}

/// `a < b` for equal-length little-endian limb slices (28-bit limbs here, 50-bit in [`wide`]).
fn less_than<T: Ord>(a: &[T], b: &[T]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a -= b` modulo `2^(28 * len)` for equal-length little-endian limb slices.
fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0u32;
    for (x, &y) in a.iter_mut().zip(b) {
        let diff = x.wrapping_sub(y).wrapping_sub(borrow);
        *x = diff & LIMB_MASK;
        borrow = diff >> 31;
    }
}

/// `-n0^-1 mod 2^32` for odd `n0`, by Newton iteration (each step doubles the correct bits).
fn neg_inverse_mod_2_32(n0: u32) -> u32 {
    // n0 * n0 == 1 mod 8, so n0 is its own inverse to 3 bits.
    let mut inverse = n0;
    for _ in 0..4 {
        inverse = inverse.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(inverse)));
    }
    inverse.wrapping_neg()
}

/// `2^(56 * k) mod n` (`R^2` for `k` limbs) by repeated doubling from `2^(bits - 1) < n`;
/// key-load time only (about 150k limb operations per 2048-bit key).
fn r_squared_mod(n: &[u32], bits: usize) -> Vec<u32> {
    let k = n.len();
    let limb_bits = LIMB_BITS as usize;
    let mut x = vec![0u32; k];
    let top = bits.saturating_sub(1);
    if let Some(limb) = x.get_mut(top / limb_bits) {
        *limb = 1 << (top % limb_bits);
    }
    for _ in top..(2 * limb_bits * k) {
        // x = 2x mod n, with x < n before and after; 2x may carry into a 29th bit of the top limb.
        let mut carry = 0u32;
        for limb in x.iter_mut() {
            let doubled = (*limb << 1) | carry;
            *limb = doubled & LIMB_MASK;
            carry = doubled >> LIMB_BITS;
        }
        if carry != 0 || !less_than(&x, n) {
            sub_in_place(&mut x, n);
        }
    }
    x
}

#[path = "rs256_wide.rs"]
mod wide;

#[cfg(test)]
#[path = "rs256_tests.rs"]
mod tests;
