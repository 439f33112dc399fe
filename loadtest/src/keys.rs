//! Which key each request carries: one hot key, uniform over N keys, or zipf over N keys.
//!
//! A distribution yields a key *index* in `0..n`; `request.rs` turns the index into descriptor
//! values. Index 0 is the hottest key under zipf, and the only key under `hot`.
//!
//! Zipf uses rejection-inversion (Hörmann & Derflinger, "Rejection-inversion to generate
//! variates from monotone discrete distributions", TOMACS 1996, in the form of Apache Commons'
//! `RejectionInversionZipfSampler`): O(1) memory and O(1) expected time per draw, so a zipf over
//! 100M keys costs no table.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// A key distribution as given on the command line: `hot`, `uniform:N` or `zipf:N:S`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDist {
    /// Every request carries the same key.
    Hot,
    /// Keys drawn uniformly from `n` keys.
    Uniform { n: u64 },
    /// Key of rank k (1-based) drawn with probability proportional to `1 / k^s`.
    Zipf { n: u64, s: f64 },
}

impl KeyDist {
    /// Number of distinct keys the distribution can produce.
    pub fn key_count(&self) -> u64 {
        match *self {
            KeyDist::Hot => 1,
            KeyDist::Uniform { n } | KeyDist::Zipf { n, .. } => n,
        }
    }

    /// A sampler for this distribution (precomputes the zipf constants once).
    pub fn sampler(&self) -> Sampler {
        match *self {
            KeyDist::Hot => Sampler::Hot,
            KeyDist::Uniform { n } => Sampler::Uniform { n },
            KeyDist::Zipf { n, s } => Sampler::Zipf(Zipf::new(n, s)),
        }
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KeyDist::Hot => write!(f, "hot"),
            KeyDist::Uniform { n } => write!(f, "uniform:{n}"),
            KeyDist::Zipf { n, s } => write!(f, "zipf:{n}:{s}"),
        }
    }
}

impl FromStr for KeyDist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let count = |text: &str| -> Result<u64, String> {
            match text.parse::<u64>() {
                Ok(0) | Err(_) => Err(format!(
                    "key count must be a whole number >= 1, got {text:?}"
                )),
                Ok(n) => Ok(n),
            }
        };
        match parts.as_slice() {
            ["hot"] => Ok(KeyDist::Hot),
            ["uniform", n] => Ok(KeyDist::Uniform { n: count(n)? }),
            ["zipf", n, exp] => {
                let s: f64 = exp
                    .parse()
                    .map_err(|_| format!("zipf exponent must be a number, got {exp:?}"))?;
                if !(s.is_finite() && s > 0.0) {
                    return Err(format!(
                        "zipf exponent must be > 0 (use uniform:N for s = 0), got {exp}"
                    ));
                }
                Ok(KeyDist::Zipf { n: count(n)?, s })
            }
            _ => Err(format!(
                "unknown key distribution {s:?}: expected hot, uniform:N or zipf:N:S"
            )),
        }
    }
}

/// Draws key indexes; cheap to clone, one per worker (each worker owns its RNG).
#[derive(Debug, Clone)]
pub enum Sampler {
    Hot,
    Uniform { n: u64 },
    Zipf(Zipf),
}

impl Sampler {
    /// A key index in `0..key_count`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            Sampler::Hot => 0,
            Sampler::Uniform { n } => rng.random_range(0..*n),
            Sampler::Zipf(z) => z.sample(rng) - 1,
        }
    }
}

/// Rejection-inversion zipf sampler over ranks `1..=n` with exponent `s > 0`.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    /// Shortcut bound: `k - x <= s_cut` implies acceptance without evaluating `h_integral`.
    s_cut: f64,
}

impl Zipf {
    fn new(n: u64, exponent: f64) -> Zipf {
        let mut z = Zipf {
            n,
            exponent,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            s_cut: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n as f64 + 0.5);
        z.s_cut = 2.0 - z.h_integral_inv(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// A rank in `1..=n`.
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        // Terminates with probability 1; the acceptance rate is high (> 0.5 for every s > 0),
        // so the expected number of rounds is below 2.
        loop {
            let r: f64 = rng.random();
            let u = self.h_integral_n + r * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inv(u);
            // `as` saturates on out-of-range floats; the clamp fixes numerical overshoot.
            let k = ((x + 0.5) as u64).clamp(1, self.n);
            let kf = k as f64;
            if kf - x <= self.s_cut || u >= self.h_integral(kf + 0.5) - self.h(kf) {
                return k;
            }
        }
    }

    /// `h(x) = x^-s`, the (unnormalised) probability of rank x.
    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    /// `H(x) = (x^(1-s) - 1) / (1 - s)`, an integral of `h` that is continuous at `s = 1`.
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        expm1_over_x((1.0 - self.exponent) * log_x) * log_x
    }

    fn h_integral_inv(&self, x: f64) -> f64 {
        // Numerical error can push t slightly below -1, where log1p is undefined.
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (log1p_over_x(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, with its Taylor series near 0.
fn log1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, with its Taylor series near 0.
fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn counts(dist: KeyDist, draws: usize) -> Vec<u64> {
        let sampler = dist.sampler();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u64; dist.key_count() as usize];
        for _ in 0..draws {
            let k = sampler.sample(&mut rng);
            counts[k as usize] += 1;
        }
        counts
    }

    #[test]
    fn hot_is_one_key() {
        assert_eq!(KeyDist::Hot.key_count(), 1);
        assert_eq!(counts(KeyDist::Hot, 1000), vec![1000]);
    }

    #[test]
    fn uniform_covers_every_key_evenly() {
        let c = counts(KeyDist::Uniform { n: 50 }, 100_000);
        assert_eq!(c.len(), 50);
        // Expected 2000 per key; 5 sigma of a binomial(100k, 1/50) is ~220.
        assert!(c.iter().all(|&n| (1780..=2220).contains(&n)), "{c:?}");
    }

    #[test]
    fn zipf_matches_its_probability_mass() {
        let (n, s) = (100u64, 1.0f64);
        let draws = 200_000;
        let c = counts(KeyDist::Zipf { n, s }, draws);
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        for rank in [1u64, 2, 3, 10, 50] {
            let expected = (rank as f64).powf(-s) / norm;
            let seen = c[(rank - 1) as usize] as f64 / draws as f64;
            assert!(
                (seen - expected).abs() < 0.1 * expected + 0.001,
                "rank {rank}: seen {seen:.4}, expected {expected:.4}"
            );
        }
    }

    #[test]
    fn zipf_is_skewed_toward_low_ranks() {
        let c = counts(KeyDist::Zipf { n: 1000, s: 1.2 }, 100_000);
        assert!(c[0] > c[1] && c[1] > c[9] && c[9] > c[99]);
        // The hottest 1% of keys take more than half the traffic at s = 1.2 (56.9%).
        let norm: f64 = (1..=1000).map(|k| (k as f64).powf(-1.2)).sum();
        let expected: f64 = (1..=10).map(|k| (k as f64).powf(-1.2)).sum::<f64>() / norm;
        let top = c[..10].iter().sum::<u64>() as f64 / 100_000.0;
        assert!(
            (top - expected).abs() < 0.01,
            "top-10 share {top}, expected {expected}"
        );
    }

    #[test]
    fn zipf_stays_in_range_for_extreme_parameters() {
        for (n, s) in [(1u64, 1.0), (2, 0.01), (1_000_000_000, 3.0), (10, 50.0)] {
            let sampler = KeyDist::Zipf { n, s }.sampler();
            let mut rng = SmallRng::seed_from_u64(1);
            for _ in 0..10_000 {
                assert!(sampler.sample(&mut rng) < n);
            }
        }
    }

    #[test]
    fn parses_and_prints_distributions() {
        assert_eq!("hot".parse::<KeyDist>(), Ok(KeyDist::Hot));
        assert_eq!(
            "uniform:1000".parse::<KeyDist>(),
            Ok(KeyDist::Uniform { n: 1000 })
        );
        assert_eq!(
            "zipf:1000000:1.1".parse::<KeyDist>(),
            Ok(KeyDist::Zipf {
                n: 1_000_000,
                s: 1.1
            })
        );
        assert_eq!(KeyDist::Zipf { n: 5, s: 0.9 }.to_string(), "zipf:5:0.9");
        for bad in [
            "",
            "uniform",
            "uniform:0",
            "zipf:10",
            "zipf:10:0",
            "zipf:10:x",
            "cold",
        ] {
            assert!(bad.parse::<KeyDist>().is_err(), "{bad:?} should not parse");
        }
    }
}
