//! A small HyperLogLog for "approximately how many distinct values has this
//! metadata key seen". 1024 one-byte registers (≈3 % standard error); two
//! sketches merge by taking the larger register, so replicas that update the
//! same row in turn (under a row lock) combine exactly as one sketch would.

const P: u32 = 10;
const M: usize = 1 << P;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hll {
    registers: Vec<u8>,
}

impl Default for Hll {
    fn default() -> Self {
        Hll {
            registers: vec![0; M],
        }
    }
}

impl Hll {
    /// Reads a stored sketch; anything malformed counts as empty.
    pub fn from_bytes(bytes: Option<&[u8]>) -> Hll {
        match bytes {
            Some(b) if b.len() == M => Hll {
                registers: b.to_vec(),
            },
            _ => Hll::default(),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.registers
    }

    pub fn insert(&mut self, value: &str) {
        let h = blake3::hash(value.as_bytes());
        let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default());
        let idx = (x >> (64 - P)) as usize;
        let rest = (x << P) | (1 << (P - 1)); // guard bit bounds the rank
        let rank = rest.leading_zeros() as u8 + 1;
        if rank > self.registers[idx] {
            self.registers[idx] = rank;
        }
    }

    pub fn merge(&mut self, other: &Hll) {
        for (a, b) in self.registers.iter_mut().zip(&other.registers) {
            *a = (*a).max(*b);
        }
    }

    pub fn estimate(&self) -> u64 {
        let m = M as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self
            .registers
            .iter()
            .map(|&r| 2f64.powi(-i32::from(r)))
            .sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|&&r| r == 0).count();
        let e = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln() // linear counting for small sets
        } else {
            raw
        };
        e.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sets_are_counted_almost_exactly() {
        let mut h = Hll::default();
        for i in 0..50 {
            h.insert(&format!("user-{i}"));
            h.insert(&format!("user-{i}")); // repeats do not count
        }
        assert!((45..=55).contains(&h.estimate()), "{}", h.estimate());
    }

    #[test]
    fn large_sets_are_within_a_few_percent() {
        let mut h = Hll::default();
        for i in 0..100_000 {
            h.insert(&i.to_string());
        }
        let e = h.estimate() as f64;
        assert!((e - 100_000.0).abs() / 100_000.0 < 0.1, "{e}");
    }

    #[test]
    fn merging_two_replicas_sketches_equals_one_sketch_of_everything() {
        let (mut a, mut b, mut both) = (Hll::default(), Hll::default(), Hll::default());
        for i in 0..3000 {
            let v = format!("v{i}");
            if i % 2 == 0 {
                a.insert(&v)
            } else {
                b.insert(&v)
            }
            both.insert(&v);
        }
        a.merge(&b);
        assert_eq!(a, both);
        assert_eq!(Hll::from_bytes(Some(a.as_bytes())), a);
        assert_eq!(Hll::from_bytes(Some(b"short")), Hll::default());
    }
}
