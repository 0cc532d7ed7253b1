//! Reconnection delays: exponential, capped, jittered, so a fleet of watchers that lost
//! Capstan together does not come back in step.

use std::sync::Arc;
use std::time::Duration;

use capstan_core::rng::Rng;

/// Exponential backoff with "equal jitter": attempt `n` waits between half and all of
/// `min(base × 2ⁿ, max)`, the random part from an injected [`Rng`].
#[derive(Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: Arc<dyn Rng>,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("base", &self.base)
            .field("max", &self.max)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// The watcher's default first delay.
pub const DEFAULT_BASE: Duration = Duration::from_millis(250);
/// The watcher's default longest delay.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

impl Backoff {
    /// Delays from `base` doubling up to `max` (`max` is raised to `base` if lower).
    pub fn new(base: Duration, max: Duration, rng: Arc<dyn Rng>) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
            rng,
        }
    }

    /// The delay before the next attempt; each call doubles the ceiling until `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .checked_mul(1u32 << self.attempt.min(31))
            .map_or(self.max, |d| d.min(self.max));
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let mut b = [0u8; 8];
        // A generator that fails costs the jitter, not the retry.
        let span = (ceiling - half).as_nanos() as u64;
        let extra = match self.rng.fill(&mut b) {
            Ok(()) => u64::from_le_bytes(b) % span.saturating_add(1),
            Err(_) => span,
        };
        half + Duration::from_nanos(extra)
    }

    /// Back to `base` (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_core::CoreError;

    /// Always the same bytes.
    struct Fixed(u8);
    impl Rng for Fixed {
        fn fill(&self, dest: &mut [u8]) -> Result<(), CoreError> {
            dest.fill(self.0);
            Ok(())
        }
    }

    struct Broken;
    impl Rng for Broken {
        fn fill(&self, _: &mut [u8]) -> Result<(), CoreError> {
            Err(CoreError::Crypto("no entropy"))
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap_within_the_jitter_band() {
        let mut b = Backoff::new(ms(250), Duration::from_secs(30), Arc::new(Fixed(0)));
        // Zero randomness: the bottom of each band, half the ceiling.
        let got: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        let want: Vec<Duration> = [125, 250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]
            .into_iter()
            .map(ms)
            .collect();
        assert_eq!(got, want);
        assert_eq!(b.attempts(), 10);
        b.reset();
        assert_eq!(b.next_delay(), ms(125), "a reset starts over");
    }

    #[test]
    fn jitter_spreads_within_half_to_all_of_the_ceiling() {
        for seed in [1u8, 7, 0x80, 0xFF] {
            let mut b = Backoff::new(ms(250), Duration::from_secs(30), Arc::new(Fixed(seed)));
            let mut ceiling = ms(250);
            for _ in 0..40 {
                let d = b.next_delay();
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{d:?} outside {ceiling:?}/2..={ceiling:?}"
                );
                ceiling = (ceiling * 2).min(Duration::from_secs(30));
            }
        }
        // Different randomness, different delays (watchers do not reconnect in step).
        let mut a = Backoff::new(ms(250), Duration::from_secs(30), Arc::new(Fixed(1)));
        let mut b = Backoff::new(ms(250), Duration::from_secs(30), Arc::new(Fixed(0xFF)));
        assert_ne!(a.next_delay(), b.next_delay());
    }

    #[test]
    fn never_overflows_and_survives_a_broken_generator() {
        let mut b = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Arc::new(Broken),
        );
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
        assert_eq!(
            b.next_delay(),
            Duration::from_secs(60),
            "no jitter: the ceiling"
        );
        // A cap below the base is raised to it.
        let mut b = Backoff::new(ms(500), ms(100), Arc::new(Fixed(0)));
        assert_eq!(b.next_delay(), ms(250));
        assert_eq!(b.next_delay(), ms(250));
    }
}
