//! `e^x` in single precision, computed the same way on every CPU.
//!
//! The algorithm is the one of ARM's optimized-routines `expf` (MIT licence), which glibc
//! (since 2.27) and musl ship: `x · 32/ln 2 = k + r`, `e^x = 2^(k/32) · 2^(r/32)` with a
//! 32-entry table for `2^(i/32)` and a cubic polynomial for `2^(r/32)`, all in `f64`. glibc
//! selects a variant by CPU at run time: on CPUs with FMA the polynomial's multiply-adds are
//! fused, which changes some results. Here every product and sum is rounded on its own
//! (Rust never contracts), which is glibc's variant for CPUs without FMA, on every CPU.

/// `tab[i] = bits(2^(i/32)) - (i << 47)`.
const TAB: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

const N: f64 = 32.0;

/// `e^x`, error below 0.502 ULP.
pub fn expf(x: f32) -> f32 {
    let bits = x.to_bits();
    let abstop = (bits >> 20) & 0x7ff;
    if abstop >= 0x42b {
        // |x| ≥ 88 or NaN.
        if x == f32::NEG_INFINITY {
            return 0.0;
        }
        if abstop >= 0x7f8 {
            return x + x;
        }
        if x > f32::from_bits(0x42b1_7217) {
            return f32::INFINITY;
        }
        if x < f32::from_bits(0xc2cf_f1b4) {
            return 0.0;
        }
    }
    let invln2_scaled = f64::from_bits(0x3ff7_1547_652b_82fe) * N;
    let c0 = f64::from_bits(0x3fac_6af8_4b91_2394) / N / N / N;
    let c1 = f64::from_bits(0x3fce_bfce_50fa_c4f3) / N / N;
    let c2 = f64::from_bits(0x3fe6_2e42_ff0c_52d6) / N;
    let shift = f64::from_bits(0x4338_0000_0000_0000); // 1.5 · 2^52
    let xd = x as f64;
    let z = invln2_scaled * xd;
    // Round z to an integer (ties to even) through the shift.
    let kd = z + shift;
    let ki = kd.to_bits();
    let kd = kd - shift;
    let r = z - kd;
    let t = TAB[(ki % 32) as usize].wrapping_add(ki << 47);
    let s = f64::from_bits(t);
    let p = c0 * r + c1;
    let r2 = r * r;
    let y = c2 * r + 1.0;
    let y = p * r2 + y;
    (y * s) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_points_and_limits() {
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(-0.0), 1.0);
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(f32::INFINITY), f32::INFINITY);
        assert!(expf(f32::NAN).is_nan());
        assert_eq!(expf(89.0), f32::INFINITY);
        assert_eq!(expf(-105.0), 0.0);
        assert_eq!(expf(1.0), std::f32::consts::E);
    }

    #[test]
    fn within_one_ulp_of_the_double_result() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = expf(x);
            let want = (x as f64).exp() as f32;
            worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
            x += 0.0137;
        }
        assert!(worst <= 1, "worst {worst} ULP");
    }
}
