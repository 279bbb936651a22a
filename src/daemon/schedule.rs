//! The cron schedule: when the next backup is due, and how missed slots coalesce.
//!
//! Slots come from `schedule.cron` (5 or 6 fields, see [`crate::config::parse_cron`]) read in
//! `schedule.timezone` (default UTC): a `0 2 * * *` schedule with `Europe/Berlin` fires at
//! 02:00 Berlin time, which is skipped on the spring-forward day and happens once on the
//! fall-back day (the `cron` crate's behaviour with chrono-tz).
//!
//! Missed slots (the process was down, not leader, or a run took longer than the interval)
//! coalesce: [`Schedule::due`] says "run now" once, for the latest missed slot, never once per
//! slot.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    tz: Tz,
}

/// When the next run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// One or more slots after the last run have passed: run now, once. `slot` is the latest
    /// passed slot (the one the run stands for), `missed` how many slots passed.
    Now {
        /// Latest slot `<= now`.
        slot: DateTime<Utc>,
        /// Number of slots in `(last, now]` (capped at 1000).
        missed: u32,
    },
    /// The next slot is in the future.
    At(DateTime<Utc>),
    /// The expression has no future slot (e.g. a past year).
    Never,
}

impl Schedule {
    /// Parses `expr` (5 or 6 fields), read in `tz` (`ScheduleConfig::time_zone`).
    ///
    /// Errors: the message of [`crate::config::parse_cron`].
    pub fn new(expr: &str, tz: Tz) -> Result<Self, String> {
        let cron = crate::config::parse_cron(expr)?;
        Ok(Schedule { cron, tz })
    }

    /// First slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.tz))
            .next()
            .map(|d| d.with_timezone(&Utc))
    }

    /// What to do at `now`, given that the last run stood for slot (or happened at) `last`.
    /// `last = None` (no backup known) means a run is due now.
    pub fn due(&self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Due {
        let Some(last) = last else {
            return Due::Now {
                slot: now,
                missed: 0,
            };
        };
        let mut it = self.cron.after(&last.with_timezone(&self.tz));
        let Some(first) = it.next().map(|d| d.with_timezone(&Utc)) else {
            return Due::Never;
        };
        if first > now {
            return Due::At(first);
        }
        let mut slot = first;
        let mut missed = 1u32;
        // Count the passed slots (bounded), keeping the latest; a long outage on a per-second
        // schedule is cut short by jumping to the slots just before `now`.
        for d in it.by_ref() {
            let d = d.with_timezone(&Utc);
            if d > now {
                break;
            }
            slot = d;
            missed += 1;
            if missed >= 1000 {
                let start = now - chrono::Duration::days(2);
                if let Some(s) = self
                    .cron
                    .after(&start.with_timezone(&self.tz))
                    .map(|d| d.with_timezone(&Utc))
                    .take_while(|d| *d <= now)
                    .last()
                {
                    slot = s;
                }
                break;
            }
        }
        Due::Now { slot, missed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_fields() {
        let s = Schedule::new("*/30 * * * *", Tz::UTC).unwrap();
        assert_eq!(
            s.next_after(t("2026-11-23T10:00:00Z")),
            Some(t("2026-11-23T10:30:00Z"))
        );
        let s = Schedule::new("*/2 * * * * *", Tz::UTC).unwrap();
        assert_eq!(
            s.next_after(t("2026-11-23T10:00:01Z")),
            Some(t("2026-11-23T10:00:02Z"))
        );
    }

    #[test]
    fn due_cases() {
        let s = Schedule::new("0 */30 * * * *", Tz::UTC).unwrap();
        // No backup at all: now.
        assert!(matches!(
            s.due(None, t("2026-11-23T10:07:00Z")),
            Due::Now { .. }
        ));
        // Last run 10:00, now 10:20: next 10:30.
        assert_eq!(
            s.due(Some(t("2026-11-23T10:00:00Z")), t("2026-11-23T10:20:00Z")),
            Due::At(t("2026-11-23T10:30:00Z"))
        );
        // A run that finished late (10:31 for the 10:00 slot): the 10:30 slot was missed, run once.
        assert_eq!(
            s.due(Some(t("2026-11-23T10:00:00Z")), t("2026-11-23T10:31:00Z")),
            Due::Now {
                slot: t("2026-11-23T10:30:00Z"),
                missed: 1
            }
        );
        // Down for a day: one run now for the latest slot, 48 missed.
        assert_eq!(
            s.due(Some(t("2026-11-22T10:00:00Z")), t("2026-11-23T10:05:00Z")),
            Due::Now {
                slot: t("2026-11-23T10:00:00Z"),
                missed: 48
            }
        );
        // Per-second schedule down for a week: bounded work, latest slot.
        let s = Schedule::new("* * * * * *", Tz::UTC).unwrap();
        match s.due(Some(t("2026-11-16T10:00:00Z")), t("2026-11-23T10:05:00Z")) {
            Due::Now { slot, missed } => {
                assert_eq!(slot, t("2026-11-23T10:05:00Z"));
                assert_eq!(missed, 1000);
            }
            other => panic!("{other:?}"),
        }
        let s = Schedule::new("0 0 0 1 1 * 2020", Tz::UTC).unwrap();
        assert_eq!(
            s.due(Some(t("2026-01-01T00:00:00Z")), t("2026-11-23T10:05:00Z")),
            Due::Never
        );
    }

    #[test]
    fn timezone_and_dst() {
        // 02:30 every day in Berlin: on 2026-03-29 (spring forward) 02:30 does not exist.
        let s = Schedule::new("30 2 * * *", chrono_tz::Europe::Berlin).unwrap();
        assert_eq!(
            s.next_after(t("2026-03-27T12:00:00Z")),
            Some(t("2026-03-28T01:30:00Z"))
        );
        let after = s.next_after(t("2026-03-28T01:30:00Z")).unwrap();
        assert_eq!(
            after,
            t("2026-03-30T00:30:00Z"),
            "skips the missing 02:30 of 03-29"
        );
        // UTC by default.
        let s = Schedule::new("30 2 * * *", Tz::UTC).unwrap();
        assert_eq!(
            s.next_after(t("2026-03-27T12:00:00Z")),
            Some(t("2026-03-28T02:30:00Z"))
        );
    }
}
