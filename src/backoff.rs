//! Jittered exponential backoff, so that many tethers probing a returning node do not arrive
//! in lockstep.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            next: base,
        }
    }

    /// The next delay: doubles up to `max`, each spread by ±20 %.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(delay)
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// `delay` spread uniformly over ±20 %.
pub fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.8..=1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let expected = [100, 200, 400, 500, 500];
        for nominal in expected {
            let d = backoff.next_delay().as_secs_f64() * 1000.0;
            let nominal = nominal as f64;
            assert!(
                d >= nominal * 0.8 - 0.001 && d <= nominal * 1.2 + 0.001,
                "{d} vs {nominal}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(120));
    }
}
