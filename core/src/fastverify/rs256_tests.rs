//! Differential tests: `Rs256Verifier` against the `rsa` crate and `BigUint::modpow`, on valid
//! signatures, random values, and hand-built malformed encodings signed with the raw private key.

use super::*;
use rand_chacha::{rand_core::RngCore, rand_core::SeedableRng, ChaCha20Rng};
use rsa::{
    pkcs8::DecodePrivateKey,
    traits::{PrivateKeyParts, PublicKeyParts},
    BigUint, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey,
};

const RSA2048: &[u8] = include_bytes!("testdata/rsa2048.pk8.der");
const RSA2048_E3: &[u8] = include_bytes!("testdata/rsa2048-e3.pk8.der");
const RSA3072: &[u8] = include_bytes!("testdata/rsa3072.pk8.der");
const RSA4096: &[u8] = include_bytes!("testdata/rsa4096.pk8.der");

fn private_key(der: &[u8]) -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_der(der).expect("test key parses")
}

fn verifier_for(key: &RsaPublicKey) -> Rs256Verifier {
    Rs256Verifier::new(&key.n().to_bytes_be(), &key.e().to_bytes_be()).expect("test key accepted")
}

fn reference_verify(key: &RsaPublicKey, message: &[u8], signature: &[u8]) -> bool {
    let digest = Sha256::digest(message);
    key.verify(Pkcs1v15Sign::new::<Sha256>(), &digest, signature)
        .is_ok()
}

fn sign(key: &RsaPrivateKey, message: &[u8]) -> Vec<u8> {
    let digest = Sha256::digest(message);
    key.sign(Pkcs1v15Sign::new::<Sha256>(), &digest)
        .expect("signing works")
}

/// Raw private-key operation on an arbitrary encoded block: lets tests produce "signatures"
/// whose public-key image is exactly the malformed encoding under test.
fn raw_sign(key: &RsaPrivateKey, encoded: &[u8]) -> Vec<u8> {
    let m = BigUint::from_bytes_be(encoded);
    let s = m.modpow(key.d(), key.n());
    let mut out = s.to_bytes_be();
    while out.len() < key.size() {
        out.insert(0, 0);
    }
    out
}

fn valid_encoding(key_len: usize, digest: &[u8]) -> Vec<u8> {
    let mut em = vec![0x00, 0x01];
    em.resize(
        key_len - SHA256_DIGEST_INFO_PREFIX.len() - digest.len() - 1,
        0xff,
    );
    em.push(0x00);
    em.extend_from_slice(&SHA256_DIGEST_INFO_PREFIX);
    em.extend_from_slice(digest);
    em
}

fn random_message(rng: &mut ChaCha20Rng) -> Vec<u8> {
    let mut message = vec![0u8; (rng.next_u32() % 400) as usize];
    rng.fill_bytes(&mut message);
    message
}

#[test]
fn valid_signatures_verify_for_2048_3072_4096_and_e3_keys() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for der in [RSA2048, RSA3072, RSA4096, RSA2048_E3] {
        let key = private_key(der);
        let verifier = verifier_for(&key.to_public_key());
        for _ in 0..12 {
            let message = random_message(&mut rng);
            let signature = sign(&key, &message);
            assert!(verifier.verify(&message, &signature));
            assert!(reference_verify(&key.to_public_key(), &message, &signature));
        }
    }
}

/// Bases below `n` for exponentiation tests, each with its `k`-byte big-endian form: the edges
/// (0, 1, 2, `n - 1`, `n - 2`, `2^(8k - 1) mod n`) and 300 random ones.
fn bases(n: &BigUint, k: usize, rng: &mut ChaCha20Rng) -> Vec<(BigUint, Vec<u8>)> {
    let mut bases: Vec<BigUint> = vec![
        BigUint::from(0u32),
        BigUint::from(1u32),
        BigUint::from(2u32),
        n - 1u32,
        n - 2u32,
        (BigUint::from(1u32) << (8 * k - 1)) % n,
    ];
    for _ in 0..300 {
        let mut bytes = vec![0u8; k];
        rng.fill_bytes(&mut bytes);
        bases.push(BigUint::from_bytes_be(&bytes) % n);
    }
    bases
        .into_iter()
        .map(|s| {
            let mut s_bytes = s.to_bytes_be();
            while s_bytes.len() < k {
                s_bytes.insert(0, 0);
            }
            (s, s_bytes)
        })
        .collect()
}

#[test]
fn modular_exponentiation_matches_biguint_modpow_on_random_values() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    for der in [RSA2048, RSA3072, RSA4096, RSA2048_E3] {
        let key = private_key(der);
        let verifier = verifier_for(&key.to_public_key());
        let n = key.n().clone();
        let k = key.size();
        for (s, s_bytes) in bases(&n, k, &mut rng) {
            let expected = s.modpow(key.e(), &n);
            let got = verifier.public_op(&s_bytes).expect("s < n is accepted");
            assert_eq!(BigUint::from_bytes_be(&got), expected);
            assert_eq!(got.len(), k);
        }
    }
}

#[test]
fn signatures_not_below_the_modulus_are_rejected() {
    let key = private_key(RSA2048);
    let public = key.to_public_key();
    let verifier = verifier_for(&public);
    let message = b"header.payload";
    let n = public.n().to_bytes_be();
    let n_plus_one = (public.n() + 1u32).to_bytes_be();
    let all_ones = vec![0xff; public.size()];
    for signature in [n, n_plus_one, all_ones] {
        assert_eq!(signature.len(), public.size());
        assert!(!verifier.verify(message, &signature));
        assert!(!reference_verify(&public, message, &signature));
        assert!(verifier.public_op(&signature).is_none());
    }
}

#[test]
fn signatures_of_the_wrong_length_are_rejected() {
    let key = private_key(RSA2048);
    let public = key.to_public_key();
    let verifier = verifier_for(&public);
    let message = b"header.payload";
    let signature = sign(&key, message);
    let mut with_leading_zero = vec![0u8];
    with_leading_zero.extend_from_slice(&signature);
    let candidates = [
        Vec::new(),
        vec![0u8; 1],
        signature[1..].to_vec(),
        signature[..signature.len() - 1].to_vec(),
        with_leading_zero,
        [signature.as_slice(), &[0u8]].concat(),
        vec![0u8; 4096],
    ];
    for candidate in candidates {
        assert!(!verifier.verify(message, &candidate));
        assert!(!reference_verify(&public, message, &candidate));
    }
}

#[test]
fn flipped_bits_in_signature_or_message_are_rejected_like_the_rsa_crate() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for der in [RSA2048, RSA4096] {
        let key = private_key(der);
        let public = key.to_public_key();
        let verifier = verifier_for(&public);
        for _ in 0..6 {
            let message = random_message(&mut rng);
            let signature = sign(&key, &message);
            for _ in 0..20 {
                let mut bad = signature.clone();
                let bit = rng.next_u32() as usize % (bad.len() * 8);
                bad[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    verifier.verify(&message, &bad),
                    reference_verify(&public, &message, &bad)
                );
                assert!(!verifier.verify(&message, &bad));
            }
            let mut bad_message = message.clone();
            bad_message.push(b'x');
            assert!(!verifier.verify(&bad_message, &signature));
            if let Some(first) = bad_message.first_mut() {
                *first ^= 0x01;
                bad_message.pop();
                assert!(!verifier.verify(&bad_message, &signature));
            }
        }
    }
}

#[test]
fn signature_for_another_key_is_rejected() {
    let key = private_key(RSA2048);
    let other = private_key(RSA2048_E3);
    let verifier = verifier_for(&other.to_public_key());
    let message = b"header.payload";
    assert!(!verifier.verify(message, &sign(&key, message)));
}

#[test]
fn malformed_encodings_are_rejected_like_the_rsa_crate() {
    for der in [RSA2048, RSA4096] {
        let key = private_key(der);
        let public = key.to_public_key();
        let verifier = verifier_for(&public);
        let k = public.size();
        let message = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0";
        let digest = Sha256::digest(message);
        let good = valid_encoding(k, &digest);

        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut em = good.clone();
        em[1] = 0x02;
        cases.push(("block type 2", em));
        let mut em = good.clone();
        em[0] = 0x01;
        em[1] = 0x00;
        cases.push(("leading bytes swapped", em));
        let mut em = good.clone();
        em[10] = 0xfe;
        cases.push(("padding byte not ff", em));
        let separator = k - SHA256_DIGEST_INFO_PREFIX.len() - 32 - 1;
        let mut em = good.clone();
        em[separator] = 0xff;
        cases.push(("missing separator", em));
        let mut em = good.clone();
        em[separator + 4] ^= 0x01;
        cases.push(("wrong digest algorithm oid", em));
        let mut em = good.clone();
        let last = em.len() - 1;
        em[last] ^= 0x80;
        cases.push(("wrong digest", em));
        // DigestInfo without the NULL parameters: shorter T, one more padding byte.
        let mut em = vec![0x00, 0x01];
        let no_null: [u8; 17] = [
            0x30, 0x2f, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x04, 0x20,
        ];
        em.resize(k - no_null.len() - 32 - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(&no_null);
        em.extend_from_slice(&digest);
        cases.push(("digest info without null", em));
        // SHA-1 DigestInfo around the first 20 bytes of the digest.
        let sha1_prefix: [u8; 15] = [
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ];
        let mut em = vec![0x00, 0x01];
        em.resize(k - sha1_prefix.len() - 20 - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(&sha1_prefix);
        em.extend_from_slice(&digest[..20]);
        cases.push(("sha1 digest info", em));
        // Bare digest without DigestInfo.
        let mut em = vec![0x00, 0x01];
        em.resize(k - 32 - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(&digest);
        cases.push(("no digest info", em));
        // Correct DigestInfo followed by garbage, with a shorter padding (a classic
        // Bleichenbacher-2006 forgery shape against parsing verifiers).
        let mut em = vec![0x00, 0x01];
        em.extend_from_slice(&[0xff; 8]);
        em.push(0x00);
        em.extend_from_slice(&SHA256_DIGEST_INFO_PREFIX);
        em.extend_from_slice(&digest);
        em.resize(k, 0x42);
        cases.push(("garbage after digest", em));
        // Padding shortened to zero bytes, value shifted right.
        let mut em = vec![0x00, 0x01, 0x00];
        em.extend_from_slice(&SHA256_DIGEST_INFO_PREFIX);
        em.extend_from_slice(&digest);
        let mut padded = vec![0u8; k - em.len()];
        padded.extend_from_slice(&em);
        cases.push(("leading zeros instead of padding", padded));

        let signature = raw_sign(&key, &good);
        assert!(verifier.verify(message, &signature), "well-formed encoding");
        assert!(reference_verify(&public, message, &signature));
        for (name, em) in cases {
            assert_eq!(em.len(), k, "{name}");
            let signature = raw_sign(&key, &em);
            assert!(!verifier.verify(message, &signature), "{name} accepted");
            assert!(!reference_verify(&public, message, &signature), "{name}");
        }
    }
}

#[test]
fn random_garbage_signatures_never_verify() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let key = private_key(RSA2048);
    let verifier = verifier_for(&key.to_public_key());
    for _ in 0..300 {
        let len = match rng.next_u32() % 3 {
            0 => 256,
            1 => (rng.next_u32() % 600) as usize,
            _ => 255 + (rng.next_u32() % 3) as usize,
        };
        let mut signature = vec![0u8; len];
        rng.fill_bytes(&mut signature);
        assert!(!verifier.verify(b"a.b", &signature));
    }
}

#[test]
fn keys_outside_policy_are_rejected() {
    let key = private_key(RSA2048).to_public_key();
    let n = key.n().to_bytes_be();
    let e = key.e().to_bytes_be();

    let short = &n[..128];
    let mut short_odd = short.to_vec();
    short_odd[127] |= 1;
    assert_eq!(
        Rs256Verifier::new(&short_odd, &e).map(|_| ()),
        Err(Rs256KeyError::ModulusSize { bits: 1024 })
    );
    let mut even = n.clone();
    even[255] &= 0xfe;
    assert_eq!(
        Rs256Verifier::new(&even, &e).map(|_| ()),
        Err(Rs256KeyError::EvenModulus)
    );
    assert!(matches!(
        Rs256Verifier::new(&[], &e),
        Err(Rs256KeyError::ModulusSize { bits: 0 })
    ));
    assert!(matches!(
        Rs256Verifier::new(&vec![0xff; 513], &e),
        Err(Rs256KeyError::ModulusSize { bits: 4104 })
    ));
    for bad_e in [&[][..], &[0], &[1], &[2], &[0x01, 0x00, 0x00], &[1; 9]] {
        assert!(
            matches!(
                Rs256Verifier::new(&n, bad_e),
                Err(Rs256KeyError::Exponent { .. })
            ),
            "{bad_e:?}"
        );
    }
}

#[test]
fn leading_zeros_in_key_parameters_are_ignored() {
    let key = private_key(RSA2048);
    let public = key.to_public_key();
    let mut n = vec![0, 0];
    n.extend_from_slice(&public.n().to_bytes_be());
    let mut e = vec![0, 0, 0, 0, 0, 0, 0, 0, 0];
    e.extend_from_slice(&public.e().to_bytes_be());
    let verifier = Rs256Verifier::new(&n, &e).expect("leading zeros accepted");
    assert_eq!(verifier.modulus_bits(), 2048);
    let message = b"header.payload";
    assert!(verifier.verify(message, &sign(&key, message)));
}

#[test]
fn montgomery_constants_are_consistent() {
    for n0 in [1u32, 3, 0xffff_ffff, 0x8000_0001, 0x1234_5677] {
        assert_eq!(n0.wrapping_mul(neg_inverse_mod_2_32(n0)), u32::MAX);
    }
    for der in [RSA2048, RSA3072, RSA4096] {
        let key = private_key(der).to_public_key();
        let verifier = verifier_for(&key);
        let k = verifier.n.len();
        assert_eq!(k, verifier.modulus_bits().div_ceil(LIMB_BITS as usize));
        let n0 = verifier.n[0];
        assert_eq!(n0.wrapping_mul(verifier.n0_inv) & LIMB_MASK, LIMB_MASK);
        let limbs_value =
            |limbs: &[u32]| BigUint::from_bytes_be(&limbs_to_be_bytes(limbs, verifier.modulus_len));
        assert_eq!(&limbs_value(&verifier.n), key.n());
        let r2 = limbs_value(&verifier.r_squared);
        let expected = (BigUint::from(1u32) << (2 * LIMB_BITS as usize * k)) % key.n();
        assert_eq!(r2, expected);
    }
}

#[test]
fn limb_conversion_round_trips_and_limbs_stay_below_2_to_the_28() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    for len in [1usize, 2, 3, 7, 8, 255, 256, 384, 512] {
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        let limbs = be_bytes_to_limbs(&bytes, (len * 8).div_ceil(LIMB_BITS as usize));
        assert!(limbs.iter().all(|&limb| limb <= LIMB_MASK));
        assert_eq!(limbs_to_be_bytes(&limbs, len), bytes);
    }
}

/// Column sums are dot products: the kernel in use (SIMD on wasm32 with simd128) against the
/// portable one and exact 128-bit sums, at the largest limbs and at every length a 4096-bit
/// modulus produces (multiples of four, up to 148), one column at a time and two.
#[test]
fn dot_product_kernel_matches_the_portable_one() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let max = vec![LIMB_MASK; 148];
    let exact = |x: &[u32], y: &[u32]| -> u128 {
        x.iter()
            .zip(y)
            .map(|(&a, &b)| u128::from(a) * u128::from(b))
            .sum()
    };
    for len in (0..=148).step_by(4) {
        let max = &max[..len];
        assert_eq!(u128::from(kernel::dot(max, max)), exact(max, max));
        let random = |rng: &mut ChaCha20Rng| -> Vec<u32> {
            (0..len).map(|_| rng.next_u32() & LIMB_MASK).collect()
        };
        let (x, y, m, n) = (
            random(&mut rng),
            random(&mut rng),
            random(&mut rng),
            random(&mut rng),
        );
        assert_eq!(kernel::dot(&x, &y), portable::dot(&x, &y));
        assert_eq!(u128::from(kernel::dot(&x, &y)), exact(&x, &y));
        assert_eq!(kernel::dot2(&x, &y, &m, &n), portable::dot2(&x, &y, &m, &n));
        assert_eq!(kernel::dot2(&x, &y, max, max).1, kernel::dot(max, max));
        // Two neighbouring columns: y and n one limb longer, column i reading them from the
        // second limb, column i + 1 from the first.
        let (y_long, n_long) = ([&y[..], &[rng.next_u32() & LIMB_MASK]].concat(), {
            let mut n_long = vec![rng.next_u32() & LIMB_MASK];
            n_long.extend_from_slice(&n);
            n_long
        });
        let both = kernel::dot2x2(&x, &y_long, &m, &n_long);
        assert_eq!(both, portable::dot2x2(&x, &y_long, &m, &n_long));
        let this = portable::dot2(&x, &y_long[1..], &m, &n_long[1..]);
        let next = portable::dot2(&x, &y_long[..len], &m, &n_long[..len]);
        assert_eq!(both, [this.0, this.1, next.0, next.1]);
        let pair = kernel::dot1x2(&x, &y_long);
        assert_eq!(pair, portable::dot1x2(&x, &y_long));
        assert_eq!(pair, [both[0], both[2]]);
        let max_long = vec![LIMB_MASK; len + 1];
        let all_max = kernel::dot2x2(max, &max_long, max, &max_long);
        assert!(all_max
            .iter()
            .all(|&sum| u128::from(sum) == exact(max, max)));
    }
}

#[test]
fn random_key_parameters_and_signatures_never_panic() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut accepted = 0;
    for _ in 0..200 {
        let mut n = vec![0u8; (rng.next_u32() % 600) as usize];
        rng.fill_bytes(&mut n);
        let mut e = vec![0u8; (rng.next_u32() % 10) as usize];
        rng.fill_bytes(&mut e);
        let Ok(verifier) = Rs256Verifier::new(&n, &e) else {
            continue;
        };
        accepted += 1;
        for len in [0, n.len().saturating_sub(1), n.len(), n.len() + 1] {
            let mut signature = vec![0u8; len];
            rng.fill_bytes(&mut signature);
            assert!(!verifier.verify(b"a.b", &signature));
        }
        assert!(!verifier.verify(b"a.b", &n));
    }
    assert!(
        accepted > 0,
        "some random odd moduli of 2048..=4096 bits are accepted"
    );
}

/// The 50-bit arithmetic ([`wide`]) against `BigUint::modpow`, whichever of the two the
/// verifier uses on this host (the test above checks the one it uses).
#[test]
fn wide_limb_exponentiation_matches_biguint_modpow_on_random_values() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    for der in [RSA2048, RSA3072, RSA4096, RSA2048_E3] {
        let key = private_key(der);
        let verifier = verifier_for(&key.to_public_key());
        let n = key.n().clone();
        let k = key.size();
        let e = verifier.e;
        for (s, s_bytes) in bases(&n, k, &mut rng) {
            let got = verifier
                .wide
                .public_op(&s_bytes, e)
                .expect("s < n is accepted");
            assert_eq!(BigUint::from_bytes_be(&got), s.modpow(key.e(), &n));
            assert_eq!(got.len(), k);
        }
        // Not below the modulus, or of another length: refused.
        let n_bytes = n.to_bytes_be();
        assert!(verifier.wide.public_op(&n_bytes, e).is_none());
        assert!(verifier.wide.public_op(&[0xff; 1][..], e).is_none());
        assert!(verifier.wide.public_op(&vec![0xff; k], e).is_none());
        assert!(verifier.wide.public_op(&vec![0; k + 1], e).is_none());
    }
}

/// Moduli whose bit length is a multiple of 50 (so `2n` exceeds `R` and a Montgomery product
/// can carry into a limb above the top one), and moduli just above and below one.
#[test]
fn wide_limb_exponentiation_handles_moduli_filling_their_top_limb() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    for bits in [2100usize, 2099, 2101, 2049, 2050, 2051, 2048, 4050, 4096] {
        let mut bytes = vec![0u8; bits.div_ceil(8)];
        rng.fill_bytes(&mut bytes);
        let excess = bytes.len() * 8 - bits;
        bytes[0] &= 0xff >> excess;
        bytes[0] |= 0x80 >> excess;
        *bytes.last_mut().expect("not empty") |= 1;
        let n = BigUint::from_bytes_be(&bytes);
        assert_eq!(n.bits(), bits);
        let wide = wide::Wide::new(&bytes, bits);
        // Signatures not below the modulus are refused, also when what is above the modulus'
        // bit length would be dropped by too few limbs (2^(8 * len - 1) + 1 > n).
        let mut above = vec![0u8; bytes.len()];
        above[0] = 0x80;
        above[bytes.len() - 1] = 1;
        if bits % 8 != 0 {
            assert!(wide.public_op(&above, 65537).is_none(), "{bits} bits");
        }
        assert!(wide.public_op(&bytes, 65537).is_none(), "{bits} bits");
        for _ in 0..40 {
            let mut s_bytes = vec![0u8; bytes.len()];
            rng.fill_bytes(&mut s_bytes);
            let s = BigUint::from_bytes_be(&s_bytes) % &n;
            let mut s_bytes = s.to_bytes_be();
            while s_bytes.len() < bytes.len() {
                s_bytes.insert(0, 0);
            }
            // Exponents with and without bits between the top and the lowest one.
            for e in [3u64, 65537, (1 << 40) + 1, 43, 0xffff_ffff] {
                let got = wide.public_op(&s_bytes, e).expect("s < n");
                assert_eq!(
                    BigUint::from_bytes_be(&got),
                    s.modpow(&BigUint::from(e), &n),
                    "{bits}-bit modulus, e = {e}"
                );
            }
        }
    }
}

#[test]
fn wide_limb_constants_and_conversions_are_consistent() {
    for n0 in [
        1u64,
        3,
        u64::MAX,
        0x8000_0000_0000_0001,
        0x1234_5678_9abc_def1,
    ] {
        assert_eq!(n0.wrapping_mul(wide::neg_inverse_mod_2_64(n0)), u64::MAX);
    }
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    for len in [1usize, 6, 7, 13, 255, 256, 384, 512] {
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        let limbs = wide::be_bytes_to_limbs(&bytes, (len * 8).div_ceil(wide::LIMB_BITS as usize));
        assert!(limbs.iter().all(|&limb| limb <= wide::MASK));
        assert_eq!(wide::limbs_to_be_bytes(&limbs, len), bytes);
    }
    for der in [RSA2048, RSA3072, RSA4096] {
        let key = private_key(der).to_public_key();
        let n_bytes = key.n().to_bytes_be();
        let bits = key.n().bits();
        let k = bits.div_ceil(wide::LIMB_BITS as usize);
        let limbs = wide::be_bytes_to_limbs(&n_bytes, k);
        let r2 = wide::pow2_mod(&limbs, bits, 2 * wide::LIMB_BITS as usize * k);
        let expected = (BigUint::from(1u32) << (2 * wide::LIMB_BITS as usize * k)) % key.n();
        assert_eq!(
            BigUint::from_bytes_be(&wide::limbs_to_be_bytes(&r2, n_bytes.len())),
            expected
        );
    }
}

/// The 50-bit dot products: the kernel in use (relaxed SIMD on wasm32 built with it, where the
/// multiply-add is fused) against exact 128-bit sums, at the largest limbs and at every even
/// length up to a 4096-bit modulus' 82 limbs.
#[test]
fn wide_dot_product_kernel_matches_exact_sums() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let exact = |x: &[f64], y: &[f64]| -> i128 {
        x.iter()
            .zip(y)
            .map(|(&a, &b)| (a as u64 as i128) * (b as u64 as i128))
            .sum()
    };
    let combined = |(low, high): (i64, i64)| i128::from(low) + (i128::from(high) << 50);
    if !wide::available() {
        return;
    }
    for len in (0..=84).step_by(2) {
        let max = vec![wide::MASK as f64; len];
        assert_eq!(combined(wide::kernel::dot(&max, &max)), exact(&max, &max));
        let doubled_max = vec![2.0 * wide::MASK as f64; len];
        let max_twice = vec![wide::MASK as f64; 2 * len];
        assert_eq!(
            combined(wide::kernel::dot3(
                &max,
                &doubled_max,
                &max_twice,
                &max_twice
            )),
            exact(&max, &doubled_max) + exact(&max_twice, &max_twice)
        );
        assert_eq!(
            combined(wide::kernel::dot(&max, &max)),
            combined(wide::portable::dot(&max, &max))
        );
        for _ in 0..20 {
            let random = |rng: &mut ChaCha20Rng| -> Vec<f64> {
                (0..len)
                    .map(|_| {
                        // Mostly full limbs, some small, some zero (padding) and some maximal.
                        match rng.next_u32() % 8 {
                            0 => 0.0,
                            1 => (rng.next_u64() & 0xffff) as f64,
                            2 => wide::MASK as f64,
                            _ => (rng.next_u64() & wide::MASK) as f64,
                        }
                    })
                    .collect()
            };
            let (x, y) = (random(&mut rng), random(&mut rng));
            let (low, high) = wide::kernel::dot(&x, &y);
            assert_eq!(combined((low, high)), exact(&x, &y));
            let (m, n) = (random(&mut rng), random(&mut rng));
            let both = wide::kernel::dot2(&x, &y, &m, &n);
            assert_eq!(combined(both), exact(&x, &y) + exact(&m, &n));
            // The split into low and high parts may differ between the kernels, the value not.
            assert_eq!(
                combined(both),
                combined(wide::portable::dot2(&x, &y, &m, &n))
            );
            // A squaring's three-way loop: y doubled (limbs up to 2^51), m and n twice as long.
            let doubled: Vec<f64> = y.iter().map(|&limb| 2.0 * limb).collect();
            let (m2, n2) = (
                [&m[..], &random(&mut rng)].concat(),
                [&n[..], &random(&mut rng)].concat(),
            );
            assert_eq!(
                combined(wide::kernel::dot3(&x, &doubled, &m2, &n2)),
                exact(&x, &doubled) + exact(&m2, &n2)
            );
            // Low parts are below 2^50 in magnitude each, high parts at most 2^50.
            assert!(low.unsigned_abs() <= (len as u64) << 50);
            assert!(high >= 0 && high as u64 <= (len as u64) << 50);
        }
    }
}

#[test]
fn wide_split_products_match_u128() {
    // The kernel's split of one product (fused multiply-add in V8, u128 natively).
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    if wide::available() {
        let cases = (0..10_000).map(|_| (rng.next_u64() & wide::MASK, rng.next_u64() & wide::MASK));
        for (a, b) in cases.chain([(0, 0), (wide::MASK, wide::MASK), (1, wide::MASK)]) {
            let (low, high) = wide::kernel::split(a as f64, b as f64);
            let value = i128::from(high) * (1 << wide::LIMB_BITS) + i128::from(low);
            assert_eq!(value, i128::from(a) * i128::from(b), "{a} * {b}");
            assert!(low.unsigned_abs() < 1 << wide::LIMB_BITS);
        }
    }
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let cases = (0..10_000).map(|_| (rng.next_u64() & wide::MASK, rng.next_u64() & wide::MASK));
    for (a, b) in cases.chain([
        (0, 0),
        (wide::MASK, wide::MASK),
        (1, wide::MASK),
        (wide::MASK, 1),
    ]) {
        let product = u128::from(a) * u128::from(b);
        let (low, high) = wide::mul_split(a, b);
        assert_eq!(
            u128::from(low),
            product & u128::from(wide::MASK),
            "{a} * {b}"
        );
        assert_eq!(u128::from(high), product >> wide::LIMB_BITS, "{a} * {b}");
    }
}
