//! How many tokens each simulated call uses: the size its usage report carries.
//!
//! `fixed:N` (every call N), `uniform:LO:HI` (inclusive), or `exp:MEAN[:MAX]`: exponential with
//! that mean, rounded up to a whole token and cut at `MAX` (default 10 x MEAN), the long tail of
//! LLM completions without a draw that dwarfs the budget.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeDist {
    Fixed(u64),
    Uniform { lo: u64, hi: u64 },
    Exp { mean: f64, max: u64 },
}

impl SizeDist {
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform { lo, hi } => rng.random_range(lo..=hi),
            SizeDist::Exp { mean, max } => {
                // Inversion: -mean * ln(U), U in (0, 1].
                let u: f64 = 1.0 - rng.random::<f64>();
                let x = (-mean * u.ln()).ceil();
                (x as u64).clamp(1, max)
            }
        }
    }

    /// The largest size a draw can be.
    pub fn max(&self) -> u64 {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform { hi, .. } => hi,
            SizeDist::Exp { max, .. } => max,
        }
    }
}

impl fmt::Display for SizeDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SizeDist::Fixed(n) => write!(f, "fixed:{n}"),
            SizeDist::Uniform { lo, hi } => write!(f, "uniform:{lo}:{hi}"),
            SizeDist::Exp { mean, max } => write!(f, "exp:{mean}:{max}"),
        }
    }
}

fn whole(s: &str, what: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{what} must be a whole number >= 1, got {s:?}")),
    }
}

impl FromStr for SizeDist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["fixed", n] => Ok(SizeDist::Fixed(whole(n, "fixed size")?)),
            ["uniform", lo, hi] => {
                let (lo, hi) = (whole(lo, "uniform low")?, whole(hi, "uniform high")?);
                if lo > hi {
                    return Err(format!("uniform:{lo}:{hi}: low is above high"));
                }
                Ok(SizeDist::Uniform { lo, hi })
            }
            ["exp", mean] | ["exp", mean, _] => {
                let m = whole(mean, "exp mean")?;
                let max = match parts.get(2) {
                    Some(x) => whole(x, "exp max")?,
                    None => m.saturating_mul(10),
                };
                Ok(SizeDist::Exp {
                    mean: m as f64,
                    max,
                })
            }
            _ => Err(format!(
                "unknown size distribution {s:?}: expected fixed:N, uniform:LO:HI or exp:MEAN[:MAX]"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn parses_every_form_and_refuses_nonsense() {
        assert_eq!("fixed:300".parse(), Ok(SizeDist::Fixed(300)));
        assert_eq!(
            "uniform:10:20".parse(),
            Ok(SizeDist::Uniform { lo: 10, hi: 20 })
        );
        assert_eq!(
            "exp:300".parse(),
            Ok(SizeDist::Exp {
                mean: 300.0,
                max: 3_000
            })
        );
        assert_eq!("exp:300:500".parse::<SizeDist>().map(|d| d.max()), Ok(500));
        for bad in ["fixed:0", "uniform:5:4", "exp", "normal:3", "fixed:x"] {
            assert!(bad.parse::<SizeDist>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn draws_stay_in_range_and_the_exponential_has_its_mean() {
        let mut rng = SmallRng::seed_from_u64(7);
        let u: SizeDist = "uniform:10:20".parse().expect("valid");
        assert!((0..1_000).all(|_| (10..=20).contains(&u.sample(&mut rng))));
        let e: SizeDist = "exp:300:100000".parse().expect("valid");
        let n = 20_000;
        let mean = (0..n).map(|_| e.sample(&mut rng)).sum::<u64>() as f64 / n as f64;
        // ceil() adds about half a token to the mean of 300.
        assert!((mean - 300.5).abs() < 10.0, "{mean}");
        let capped: SizeDist = "exp:300:400".parse().expect("valid");
        assert!((0..1_000).all(|_| (1..=400).contains(&capped.sample(&mut rng))));
    }
}
