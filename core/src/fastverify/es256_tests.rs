//! Differential tests: `Es256Verifier` against `p256::ecdsa::VerifyingKey` on random keys,
//! valid signatures, and many malformed or forged ones.

use super::*;
use p256::elliptic_curve::ops::Invert;
use p256::{
    ecdsa::{
        signature::{hazmat::PrehashVerifier, Signer},
        Signature, SigningKey, VerifyingKey,
    },
    elliptic_curve::ff::Field,
    NonZeroScalar,
};
use rand_chacha::{rand_core::RngCore, rand_core::SeedableRng, ChaCha20Rng};

/// Order n, big-endian.
const N_BYTES: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

fn reference_verify(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    let digest = Sha256::digest(message);
    key.verify_prehash(&digest, &signature).is_ok()
}

fn sign(key: &SigningKey, message: &[u8]) -> Vec<u8> {
    let signature: Signature = key.sign(message);
    signature.to_bytes().to_vec()
}

fn random_message(rng: &mut ChaCha20Rng) -> Vec<u8> {
    let mut message = vec![0u8; (rng.next_u32() % 300) as usize];
    rng.fill_bytes(&mut message);
    message
}

fn verifier_for(key: &SigningKey) -> Es256Verifier {
    Es256Verifier::new(&PublicKey::from(key.verifying_key())).expect("valid key")
}

/// `n - s` as 32 big-endian bytes, for `0 < s < n`.
fn negate_mod_n(s: &[u8]) -> Vec<u8> {
    let scalar = Option::<Scalar>::from(Scalar::from_repr(field_bytes(s).unwrap())).unwrap();
    (-scalar).to_bytes().to_vec()
}

#[test]
fn valid_signatures_from_random_keys_verify() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    for _ in 0..8 {
        let key = SigningKey::random(&mut rng);
        let verifier = verifier_for(&key);
        for _ in 0..125 {
            let message = random_message(&mut rng);
            let signature = sign(&key, &message);
            assert!(verifier.verify(&message, &signature));
            assert!(reference_verify(key.verifying_key(), &message, &signature));
        }
    }
}

#[test]
fn high_s_signatures_are_accepted_like_the_ecdsa_crate() {
    // ECDSA malleability: (r, n - s) is valid whenever (r, s) is. JWS does not forbid it and
    // the ecdsa crate's verify accepts it, so we do too; token caches must key on the whole
    // token (or signature bytes) knowing a second valid signature exists.
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let key = SigningKey::random(&mut rng);
    let verifier = verifier_for(&key);
    for _ in 0..50 {
        let message = random_message(&mut rng);
        let signature = sign(&key, &message);
        let mut flipped = signature[..32].to_vec();
        flipped.extend_from_slice(&negate_mod_n(&signature[32..]));
        assert!(reference_verify(key.verifying_key(), &message, &flipped));
        assert!(verifier.verify(&message, &flipped));
    }
}

#[test]
fn mutated_signatures_messages_and_keys_agree_with_the_ecdsa_crate() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let key = SigningKey::random(&mut rng);
    let other = SigningKey::random(&mut rng);
    let verifier = verifier_for(&key);
    let other_verifier = verifier_for(&other);
    for _ in 0..200 {
        let message = random_message(&mut rng);
        let signature = sign(&key, &message);

        let mut bad = signature.clone();
        let bit = rng.next_u32() as usize % 512;
        bad[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            verifier.verify(&message, &bad),
            reference_verify(key.verifying_key(), &message, &bad)
        );
        assert!(!verifier.verify(&message, &bad));

        let mut bad_message = message.clone();
        bad_message.push(0);
        assert!(!verifier.verify(&bad_message, &signature));
        if !message.is_empty() {
            let mut bad_message = message.clone();
            let bit = rng.next_u32() as usize % (message.len() * 8);
            bad_message[bit / 8] ^= 1 << (bit % 8);
            assert!(!verifier.verify(&bad_message, &signature));
        }

        assert!(!other_verifier.verify(&message, &signature));
        assert!(!reference_verify(
            other.verifying_key(),
            &message,
            &signature
        ));
    }
}

#[test]
fn out_of_range_r_and_s_are_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let key = SigningKey::random(&mut rng);
    let verifier = verifier_for(&key);
    let message = b"header.payload";
    let signature = sign(&key, message);
    let (r, s) = signature.split_at(32);
    let zero = [0u8; 32];
    let mut n_plus_one = N_BYTES;
    n_plus_one[31] += 1;
    let max = [0xffu8; 32];
    let mut r_plus_n = [0u8; 32];
    {
        // r + n mod 2^256: a representation of r that only a sloppy parser would reduce.
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let sum = u16::from(r[i]) + u16::from(N_BYTES[i]) + carry;
            r_plus_n[i] = sum as u8;
            carry = sum >> 8;
        }
    }
    let candidates: Vec<Vec<u8>> = vec![
        [&zero[..], s].concat(),
        [r, &zero[..]].concat(),
        [&zero[..], &zero[..]].concat(),
        [&N_BYTES[..], s].concat(),
        [r, &N_BYTES[..]].concat(),
        [&n_plus_one[..], s].concat(),
        [r, &n_plus_one[..]].concat(),
        [&max[..], s].concat(),
        [r, &max[..]].concat(),
        [&r_plus_n[..], s].concat(),
    ];
    for candidate in candidates {
        assert!(!verifier.verify(message, &candidate));
        assert!(!reference_verify(key.verifying_key(), message, &candidate));
    }
}

#[test]
fn wrong_length_signatures_are_rejected() {
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let key = SigningKey::random(&mut rng);
    let verifier = verifier_for(&key);
    let message = b"header.payload";
    let signature = sign(&key, message);
    let der = p256::ecdsa::Signature::from_slice(&signature)
        .unwrap()
        .to_der();
    let candidates: Vec<Vec<u8>> = vec![
        Vec::new(),
        signature[..63].to_vec(),
        signature[1..].to_vec(),
        [&signature[..], &[0u8][..]].concat(),
        [&[0u8][..], &signature[..]].concat(),
        der.as_bytes().to_vec(),
        vec![0u8; 128],
    ];
    for candidate in candidates {
        assert!(!verifier.verify(message, &candidate));
    }
}

#[test]
fn signature_whose_point_sum_is_the_identity_is_rejected() {
    // With Q = dG, choosing r = -e/d makes u1*G + u2*Q = (e + r*d)/s * G the identity for any
    // s: the verifier must reject rather than compare a meaningless x-coordinate.
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    let d = NonZeroScalar::random(&mut rng);
    let key = SigningKey::from(d);
    let verifier = verifier_for(&key);
    let message = b"identity";
    let digest: [u8; 32] = Sha256::digest(message).into();
    let e = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(digest));
    let d_inv = Option::<Scalar>::from((*d).invert()).unwrap();
    let r = -(e * d_inv);
    let s = Scalar::random(&mut rng);
    let signature = [r.to_bytes().to_vec(), s.to_bytes().to_vec()].concat();
    assert!(!verifier.verify(message, &signature));
    assert!(!reference_verify(key.verifying_key(), message, &signature));
}

#[test]
fn x_coordinate_above_the_order_matches_r_minus_n() {
    // x(R) in [n, p) reduces to x - n; valid signatures with such R are too rare (2^-128) to
    // produce, so the final comparison is exercised directly on points with x >= n.
    let mut rng = ChaCha20Rng::seed_from_u64(16);
    let b = curve_b();
    let mut found = 0;
    let mut offset = 0u64;
    while found < 10 {
        // x = n + offset, well below p.
        let x_int = U256::from_be_slice(&N_BYTES).wrapping_add(&U256::from_u64(offset));
        offset += 1;
        let x = Option::<FieldElement>::from(FieldElement::from_bytes(&x_int.to_be_byte_array()))
            .unwrap();
        let rhs = x.square() * x - x.double() - x + b;
        let Some(y) = Option::<FieldElement>::from(rhs.sqrt()) else {
            continue;
        };
        found += 1;
        let z = FieldElement::random(&mut rng);
        let zz = z.square();
        let point = Jacobian {
            x: x * zz,
            y: y * zz * z,
            z,
        };
        let r_expected = <Scalar as Reduce<U256>>::reduce_bytes(&x.to_bytes());
        assert_eq!(r_expected, Scalar::from(offset - 1));
        assert!(x_reduces_to_r(&point, &r_expected));
        assert!(!x_reduces_to_r(&point, &(r_expected + Scalar::ONE)));
    }
}

#[test]
fn all_window_widths_agree() {
    let mut rng = ChaCha20Rng::seed_from_u64(17);
    let key = SigningKey::random(&mut rng);
    let public = PublicKey::from(key.verifying_key());
    for bits in [2, 3, 5, 6, 7] {
        let verifier = Es256Verifier::with_window_bits(&public, bits).unwrap();
        for _ in 0..20 {
            let message = random_message(&mut rng);
            let signature = sign(&key, &message);
            assert!(verifier.verify(&message, &signature), "w={bits}");
            let mut bad = signature.clone();
            bad[5] ^= 0x10;
            assert!(!verifier.verify(&message, &bad), "w={bits}");
        }
    }
    for bits in [0, 1, 13, 64] {
        assert_eq!(
            Es256Verifier::with_window_bits(&public, bits).map(|_| ()),
            Err(Es256KeyError::WindowBits { bits })
        );
    }
}

#[test]
fn signed_digits_reconstruct_the_scalar() {
    let mut rng = ChaCha20Rng::seed_from_u64(18);
    let mut scalars = vec![Scalar::ZERO, Scalar::ONE, -Scalar::ONE, -Scalar::from(2u64)];
    for _ in 0..200 {
        scalars.push(Scalar::random(&mut rng));
    }
    for bits in MIN_WINDOW_BITS..=MAX_WINDOW_BITS {
        let half = 1i32 << (bits - 1);
        let base = Scalar::from(1u64 << bits);
        for scalar in &scalars {
            let mut digits = [0i32; MAX_WINDOWS];
            let used = signed_digits(&scalar.to_bytes(), bits, &mut digits);
            let mut sum = Scalar::ZERO;
            for &digit in digits[..used].iter().rev() {
                assert!((-half..=half).contains(&digit));
                let magnitude = Scalar::from(u64::from(digit.unsigned_abs()));
                sum = sum * base + if digit < 0 { -magnitude } else { magnitude };
            }
            assert_eq!(sum, *scalar, "w={bits}");
        }
    }
}

#[test]
fn key_constructors_accept_valid_and_reject_invalid_points() {
    let mut rng = ChaCha20Rng::seed_from_u64(19);
    let key = SigningKey::random(&mut rng);
    let point = key.verifying_key().to_encoded_point(false);
    let (x, y) = (point.x().unwrap().to_vec(), point.y().unwrap().to_vec());
    let message = b"header.payload";
    let signature = sign(&key, message);

    let from_xy = Es256Verifier::from_affine_coordinates(&x, &y).unwrap();
    assert!(from_xy.verify(message, &signature));
    let compressed = key.verifying_key().to_encoded_point(true);
    let from_compressed = Es256Verifier::from_sec1_bytes(compressed.as_bytes()).unwrap();
    assert!(from_compressed.verify(message, &signature));

    let mut off_curve_y = y.clone();
    off_curve_y[31] ^= 1;
    assert!(matches!(
        Es256Verifier::from_affine_coordinates(&x, &off_curve_y),
        Err(Es256KeyError::InvalidPoint { .. })
    ));
    assert_eq!(
        Es256Verifier::from_affine_coordinates(&x[1..], &y).map(|_| ()),
        Err(Es256KeyError::CoordinateLength { len: 31 })
    );
    assert_eq!(
        Es256Verifier::from_affine_coordinates(&x, &[y.as_slice(), &[0]].concat()).map(|_| ()),
        Err(Es256KeyError::CoordinateLength { len: 33 })
    );
    assert!(Es256Verifier::from_affine_coordinates(&[0; 32], &[0; 32]).is_err());
    for bytes in [&[0u8][..], &[], &[4u8; 65][..]] {
        assert!(Es256Verifier::from_sec1_bytes(bytes).is_err());
    }
}

#[test]
fn random_garbage_signatures_never_verify() {
    let mut rng = ChaCha20Rng::seed_from_u64(20);
    let key = SigningKey::random(&mut rng);
    let verifier = verifier_for(&key);
    for _ in 0..500 {
        let len = if rng.next_u32() % 2 == 0 {
            64
        } else {
            (rng.next_u32() % 200) as usize
        };
        let mut signature = vec![0u8; len];
        rng.fill_bytes(&mut signature);
        assert!(!verifier.verify(b"a.b", &signature));
    }
}

#[test]
fn random_key_encodings_never_panic() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    for _ in 0..300 {
        let mut bytes = vec![0u8; (rng.next_u32() % 70) as usize];
        rng.fill_bytes(&mut bytes);
        if let Some(first) = bytes.first_mut() {
            *first = [0u8, 2, 3, 4][(rng.next_u32() % 4) as usize];
        }
        // Only points on the curve may be accepted; either way nothing panics.
        if let Ok(verifier) = Es256Verifier::from_sec1_bytes(&bytes) {
            assert!(!verifier.verify(b"a.b", &[1u8; 64]));
        }
        let split = bytes.len() / 2;
        let _ = Es256Verifier::from_affine_coordinates(&bytes[..split], &bytes[split..]);
    }
}

#[test]
fn scalar_inversion_matches_invert_vartime() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let minus_one = -Scalar::ONE;
    let mut samples = vec![
        Scalar::ONE,
        Scalar::ONE.double(),
        minus_one,
        minus_one.double(),
    ];
    for _ in 0..500 {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        samples.push(<Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(
            bytes,
        )));
    }
    for s in samples.into_iter().filter(|s| *s != Scalar::ZERO) {
        let expected = Option::<Scalar>::from(s.invert_vartime()).expect("nonzero");
        assert_eq!(invert_mod_order(&s), Some(expected));
    }
    assert_eq!(invert_mod_order(&Scalar::ZERO), None);
}

/// Affine coordinates of a Jacobian point, `None` for the identity.
fn jacobian_affine(p: &Jacobian) -> Option<(FieldElement, FieldElement)> {
    let z_inv = Option::<FieldElement>::from(p.z.invert())?;
    let zz_inv = z_inv.square();
    Some((p.x * zz_inv, p.y * zz_inv * z_inv))
}

/// Affine coordinates of a projective point, `None` for the identity.
fn projective_affine(p: &Projective) -> Option<(FieldElement, FieldElement)> {
    let z_inv = Option::<FieldElement>::from(p.z.invert())?;
    Some((p.x * z_inv, p.y * z_inv))
}

/// The verify's Jacobian accumulator against the complete projective formulas, including the
/// cases its addition formula does not cover by itself: the identity, `P + P` and `P + (-P)`.
#[test]
fn jacobian_accumulator_agrees_with_the_complete_formulas() {
    let b = curve_b();
    let g = generator_affine().expect("generator");
    let mut points = vec![Projective::from_affine(&g)];
    for _ in 0..20 {
        let last = *points.last().expect("nonempty");
        points.push(last.add(&points[0], &b).double(&b));
    }
    let affine = batch_normalize(&points).expect("no identity");
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    for (i, p) in affine.iter().enumerate() {
        let q = &affine[(i + 7) % affine.len()];
        // A Jacobian representation of p with a random Z.
        let z = FieldElement::random(&mut rng);
        let jp = Jacobian {
            x: p.x * z.square(),
            y: p.y * z.square() * z,
            z,
        };
        let sum = jp.add_affine(q);
        let expected = Projective::from_affine(p).add(&Projective::from_affine(q), &b);
        assert_eq!(jacobian_affine(&sum), projective_affine(&expected));
        let doubled = jp.add_affine(p);
        let expected = Projective::from_affine(p).double(&b);
        assert_eq!(jacobian_affine(&doubled), projective_affine(&expected));
        assert_eq!(jacobian_affine(&jp.double()), projective_affine(&expected));
        let negated = Affine { x: p.x, y: -p.y };
        assert!(bool::from(jp.add_affine(&negated).z.is_zero()));
        assert_eq!(
            jacobian_affine(&Jacobian::IDENTITY.add_affine(p)),
            Some((p.x, p.y))
        );
        assert!(bool::from(Jacobian::IDENTITY.double().z.is_zero()));
    }
}
