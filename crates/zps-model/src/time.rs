//! Millisecond UTC timestamps, written as RFC 3339 (`2026-11-22T18:50:03.123Z`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with millisecond precision; what `emittedAt`/`expiresAt` carry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self(ms)
    }

    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch (what databases store).
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This instant plus `d`, saturating instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// Milliseconds from `self` to `later` (zero when `later` is earlier).
    pub fn millis_until(self, later: Timestamp) -> u64 {
        u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0)
    }

    /// Parses any RFC 3339 timestamp (offsets are converted to UTC).
    pub fn parse(s: &str) -> Result<Self, chrono::ParseError> {
        DateTime::parse_from_rfc3339(s).map(|d| Self(d.timestamp_millis()))
    }

    /// As a chrono value, for providers that bind timestamps natively.
    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(d: DateTime<Utc>) -> Self {
        Self(d.timestamp_millis())
    }
}

impl Timestamp {
    /// Appends the RFC 3339 form (`2026-11-18T11:06:40.123Z`) to `out`. Every
    /// event frame carries two timestamps, so years 0–9999 take a direct
    /// path; others go through chrono.
    pub fn write_rfc3339(self, out: &mut String) {
        let ms = self.0;
        let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
        let (y, m, d) = civil_from_days(days);
        if !(0..=9999).contains(&y) {
            out.push_str(&self.to_datetime().to_rfc3339_opts(SecondsFormat::Millis, true));
            return;
        }
        let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
        let (min, rest) = (rest / 60_000, rest % 60_000);
        let (sec, milli) = (rest / 1000, rest % 1000);
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (0..width).rev() {
                b[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, m);
        put(8, 2, d);
        put(11, 2, h);
        put(14, 2, min);
        put(17, 2, sec);
        put(20, 3, milli);
        // The buffer holds ASCII digits and separators only.
        out.push_str(std::str::from_utf8(&b).unwrap_or_default());
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(24);
        self.write_rfc3339(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(24);
        self.write_rfc3339(&mut out);
        s.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_millis_utc() {
        let t = Timestamp::from_millis(1_795_000_000_123);
        assert_eq!(t.to_string(), "2026-11-18T11:06:40.123Z");
        assert_eq!(Timestamp::parse("2026-11-18T11:06:40.123Z").unwrap(), t);
        assert_eq!(Timestamp::parse("2026-11-18T12:06:40.123+01:00").unwrap(), t);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-11-18T11:06:40.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn the_direct_path_agrees_with_chrono() {
        let chrono = |t: Timestamp| t.to_datetime().to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut samples = vec![
            0,
            1,
            -1,
            951_782_400_000,
            4_107_542_399_999,
            -62_135_596_800_000,
            253_402_300_799_999,
        ];
        // Every day boundary across leap years and centuries, plus odd milliseconds.
        let mut t = -2_208_988_800_000i64; // 1900-01-01
        while t < 4_102_444_800_000 {
            samples.push(t);
            samples.push(t + 86_399_999);
            t += 86_400_000 * 7 + 3_723_456;
        }
        for ms in samples {
            let ts = Timestamp::from_millis(ms);
            assert_eq!(ts.to_string(), chrono(ts), "{ms}");
        }
        // Outside 0..=9999 chrono writes it.
        let far = Timestamp::from_millis(260_000_000_000_000);
        assert_eq!(far.to_string(), chrono(far));
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(i64::MAX - 1);
        assert_eq!(t.saturating_add(Duration::from_secs(10)).as_millis(), i64::MAX);
        assert_eq!(
            Timestamp::from_millis(10).millis_until(Timestamp::from_millis(5)),
            0
        );
    }
}
