//! A periodic tick with microsecond precision for open-loop load generators: a Linux `timerfd`
//! watched by tokio's reactor. tokio's own timer has millisecond granularity, so pacing
//! 5,000 requests/s with it sends bursts of five every millisecond instead of one every 200 µs,
//! and the burst's queueing is then measured as if it were the server's latency.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

pub struct Ticker {
    timer: AsyncFd<OwnedFd>,
    first: Duration,
    interval: Duration,
}

/// `CLOCK_MONOTONIC` now, the clock the ticks are set on (as time since an unspecified
/// start): the latency of a request is `monotonic_now() - ticker.deadline(i)`, exact however
/// late the sender was.
pub fn monotonic_now() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: duration.as_secs() as libc::time_t,
        tv_nsec: duration.subsec_nanos() as libc::c_long,
    }
}

impl Ticker {
    /// Ticks every `interval`, the first one `interval` from now. Must be called within a
    /// tokio runtime with I/O enabled.
    pub fn new(interval: Duration) -> io::Result<Self> {
        if interval.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the tick interval must be above zero",
            ));
        }
        // SAFETY: timerfd_create has no memory-safety preconditions; a negative return is an
        // error, otherwise the descriptor is new and owned by nothing else.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created, valid descriptor nobody else owns.
        let timer = unsafe { OwnedFd::from_raw_fd(raw) };
        // Armed at an absolute time, so that tick `i` is due exactly at `deadline(i)`.
        let first = monotonic_now() + interval;
        let period = libc::itimerspec {
            it_interval: timespec(interval),
            it_value: timespec(first),
        };
        // SAFETY: the descriptor is a valid timerfd and `period` outlives the call; the old
        // value is not asked for (null).
        let set = unsafe {
            libc::timerfd_settime(
                timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &period,
                std::ptr::null_mut(),
            )
        };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an `OwnedFd` keeps its descriptor open, and always the same one, until it is
        // dropped with the `AsyncFd`.
        let timer = unsafe { AsyncFd::register(timer) }.map_err(io::Error::from)?;
        Ok(Self {
            timer,
            first,
            interval,
        })
    }

    /// When tick `index` (counting from 0) is due, on the [`monotonic_now`] clock.
    pub fn deadline(&self, index: u64) -> Duration {
        self.first + self.interval.mul_f64(index as f64)
    }

    /// Waits for the next tick; returns how many intervals have elapsed since the last call
    /// (more than one when the caller was late).
    pub async fn tick(&self) -> io::Result<u64> {
        loop {
            let mut ready = self.timer.readable().await?;
            let read = ready.try_io(|timer| {
                let mut expirations = [0u8; 8];
                // SAFETY: reads at most 8 bytes into an 8-byte buffer from a valid descriptor.
                let count = unsafe {
                    libc::read(
                        timer.as_raw_fd(),
                        expirations.as_mut_ptr().cast(),
                        expirations.len(),
                    )
                };
                if count < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(u64::from_ne_bytes(expirations))
                }
            });
            match read {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn ticks_count_every_elapsed_interval() {
        // Taken before the ticker is armed: a test thread preempted between the two must not
        // make the schedule look early.
        let started = Instant::now();
        let ticker = Ticker::new(Duration::from_micros(200)).expect("timerfd");
        let mut ticks = 0;
        while ticks < 50 {
            ticks += ticker.tick().await.expect("tick");
        }
        // 50 intervals of 200 µs cannot have passed in less than 10 ms, and tick 49 was due.
        assert!(started.elapsed() >= Duration::from_millis(10));
        assert!(monotonic_now() >= ticker.deadline(49));
        assert_eq!(
            ticker.deadline(10) - ticker.deadline(0),
            Duration::from_millis(2)
        );
        // Being late is reported as several expirations at once, not lost.
        std::thread::sleep(Duration::from_millis(2));
        assert!(ticker.tick().await.expect("tick") >= 9);
    }

    #[test]
    fn a_zero_interval_is_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _entered = runtime.enter();
        assert!(Ticker::new(Duration::ZERO).is_err());
    }
}
