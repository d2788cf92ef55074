//! Naming a snapshot: `latest`, a prefix of its id, or a time; and the
//! UTC times records carry. No clock: callers pass times in.

use thiserror::Error;

use crate::calendar::{civil_from_days, days_from_civil, days_in_month};

/// Shortest id prefix taken: shorter ones match too much by accident.
pub const MIN_PREFIX: usize = 4;

/// Which snapshot a selector names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The newest.
    Latest,
    /// The one whose id starts with these hex digits (lower case).
    Prefix(String),
    /// The last one at or before this time (seconds since the Unix epoch).
    AtOrBefore(i64),
}

/// Why a selector named no single snapshot.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectError {
    /// Not a selector at all.
    #[error(
        "{0:?} names no snapshot: write `latest`, an id prefix of at least {MIN_PREFIX} hex digits, \
         or a UTC time such as 2024-05-01, \"2024-05-01 13:30\" or 2024-05-01T13:30:00Z"
    )]
    Invalid(String),
    /// The tree has no snapshot yet.
    #[error("there is no snapshot of this tree yet")]
    Empty,
    /// No snapshot at or before the time.
    #[error("no snapshot of this tree at or before {0}; the oldest is from {1}")]
    TooEarly(String, String),
    /// No id starts with the prefix.
    #[error("no snapshot of this tree has an id starting with {0}; list them to see their ids")]
    NoMatch(String),
    /// Several ids start with the prefix.
    #[error("{prefix} names {count} snapshots of this tree; give more digits of the id")]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// How many matched.
        count: usize,
    },
}

/// Parses a selector. A date alone means the end of that day, a time
/// without seconds the end of that minute: "the snapshot of May 1st" is
/// the last one taken that day.
///
/// # Errors
/// [`SelectError::Invalid`] for anything else.
pub fn parse(text: &str) -> Result<Selector, SelectError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("latest") {
        return Ok(Selector::Latest);
    }
    if text.len() >= MIN_PREFIX && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Selector::Prefix(text.to_ascii_lowercase()));
    }
    parse_time(text).map(Selector::AtOrBefore).ok_or_else(|| SelectError::Invalid(text.to_string()))
}

fn number(text: &str, digits: usize) -> Option<i64> {
    (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
}

/// Seconds since the epoch of a UTC time in the forms [`parse`] takes,
/// rounded up to the end of the period it names when parts are left out.
pub fn parse_time(text: &str) -> Option<i64> {
    let date = text.get(..10)?;
    let (y, m, d) = (number(date.get(..4)?, 4)?, number(date.get(5..7)?, 2)?, number(date.get(8..10)?, 2)?);
    if &date[4..5] != "-" || &date[7..8] != "-" || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let day = days_from_civil(y, m, d) * 86_400;
    let rest = &text[10..];
    if rest.is_empty() {
        return Some(day + 86_399);
    }
    let sep = rest.as_bytes()[0];
    if !matches!(sep, b' ' | b'T' | b't') {
        return None;
    }
    let rest = &rest[1..];
    let (h, min) = (number(rest.get(..2)?, 2)?, number(rest.get(3..5)?, 2)?);
    if &rest[2..3] != ":" || h > 23 || min > 59 {
        return None;
    }
    let minute = day + h * 3600 + min * 60;
    let rest = &rest[5..];
    if rest.is_empty() {
        return Some(minute + 59);
    }
    let s = number(rest.get(1..3)?, 2)?;
    if &rest[..1] != ":" || s > 60 {
        return None;
    }
    let second = minute + s.min(59);
    let mut rest = &rest[3..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    match rest {
        "" | "Z" | "z" => Some(second),
        _ if sep != b' ' && rest.len() == 6 => {
            let sign = match &rest[..1] {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let (oh, om) = (number(&rest[1..3], 2)?, number(&rest[4..6], 2)?);
            (&rest[3..4] == ":" && oh <= 23 && om <= 59).then(|| second - sign * (oh * 3600 + om * 60))
        }
        _ => None,
    }
}

/// RFC 3339 of `secs` since the epoch, UTC: `2024-05-01T13:30:00Z`.
pub fn format_time(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The position in `snapshots` (`(hex id, time)`, oldest first) that
/// `selector` names.
///
/// # Errors
/// None or several match.
pub fn pick(snapshots: &[(&str, i64)], selector: &Selector) -> Result<usize, SelectError> {
    let oldest = snapshots.first().ok_or(SelectError::Empty)?;
    match selector {
        Selector::Latest => Ok(snapshots.len() - 1),
        Selector::AtOrBefore(time) => snapshots
            .iter()
            .rposition(|(_, t)| t <= time)
            .ok_or_else(|| SelectError::TooEarly(format_time(*time), format_time(oldest.1))),
        Selector::Prefix(prefix) => {
            let mut matches = snapshots.iter().enumerate().filter(|(_, (id, _))| id.starts_with(prefix.as_str()));
            match (matches.next(), matches.count()) {
                (None, _) => Err(SelectError::NoMatch(prefix.clone())),
                (Some((i, _)), 0) => Ok(i),
                (Some(_), more) => Err(SelectError::Ambiguous { prefix: prefix.clone(), count: more + 1 }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn selectors_parse() {
        assert_eq!(parse("latest"), Ok(Selector::Latest));
        assert_eq!(parse("ABcd12"), Ok(Selector::Prefix("abcd12".into())));
        assert!(matches!(parse("abc"), Err(SelectError::Invalid(_))));
        assert!(matches!(parse("yesterday"), Err(SelectError::Invalid(_))));
        let may1 = 1_714_521_600; // 2024-05-01T00:00:00Z
        assert_eq!(parse("2024-05-01"), Ok(Selector::AtOrBefore(may1 + 86_399)));
        assert_eq!(parse("2024-05-01 13:30"), Ok(Selector::AtOrBefore(may1 + 13 * 3600 + 30 * 60 + 59)));
        assert_eq!(parse("2024-05-01 13:30:05"), Ok(Selector::AtOrBefore(may1 + 13 * 3600 + 30 * 60 + 5)));
        assert_eq!(parse("2024-05-01T13:30:05Z"), Ok(Selector::AtOrBefore(may1 + 13 * 3600 + 30 * 60 + 5)));
        assert_eq!(parse("2024-05-01T13:30:05.25+02:00"), Ok(Selector::AtOrBefore(may1 + 11 * 3600 + 30 * 60 + 5)));
        for bad in [
            "2024-13-01",
            "2024-02-30",
            "2024-05-01 25:00",
            "2024-05-01T13:30:05+0200",
            "2024-5-1",
            "2024-05-01 13:30:05+02:00",
        ] {
            assert!(matches!(parse(bad), Err(SelectError::Invalid(_))), "{bad}");
        }
        assert_eq!(parse("2024-02-29"), Ok(Selector::AtOrBefore(1_709_251_199)));
    }

    #[test]
    fn picks_the_named_snapshot() {
        let snaps = [("abcd01", 100), ("abce02", 200), ("ffff03", 300)];
        assert_eq!(pick(&snaps, &Selector::Latest), Ok(2));
        assert_eq!(pick(&snaps, &Selector::AtOrBefore(250)), Ok(1));
        assert_eq!(pick(&snaps, &Selector::AtOrBefore(200)), Ok(1));
        assert!(matches!(pick(&snaps, &Selector::AtOrBefore(99)), Err(SelectError::TooEarly(..))));
        assert_eq!(pick(&snaps, &Selector::Prefix("abce".into())), Ok(1));
        assert_eq!(
            pick(&snaps, &Selector::Prefix("abc".into())),
            Err(SelectError::Ambiguous { prefix: "abc".into(), count: 2 })
        );
        assert_eq!(pick(&snaps, &Selector::Prefix("0000".into())), Err(SelectError::NoMatch("0000".into())));
        assert_eq!(pick(&[], &Selector::Latest), Err(SelectError::Empty));
    }

    #[test]
    fn formats_known_times() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_714_570_205), "2024-05-01T13:30:05Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59Z");
    }

    proptest! {
        #[test]
        fn formatted_times_parse_back(secs in 0i64..253_402_300_800) {
            let text = format_time(secs);
            prop_assert_eq!(parse_time(&text), Some(secs));
        }
    }
}
