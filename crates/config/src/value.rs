//! serde forms of values that flags take as text: CIDRs and other `FromStr` types, durations
//! (`30s`, `1m 30s`), and lists (a YAML sequence, or one comma-separated string as the flag
//! takes it). Each parses exactly as the flag's parser does, so a file and a flag accept the
//! same values.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;

/// `Option<T>` as its text (`Display`/`FromStr`), e.g. a CIDR `10.0.0.0/16`.
pub mod text {
    use super::*;

    /// Writes the value as its text.
    pub fn serialize<T: fmt::Display, S: Serializer>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    /// Parses the text as the flag would.
    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
        D: Deserializer<'de>,
    {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| de::Error::custom(format!("{s:?}: {e}"))),
        }
    }

    use serde::Deserialize;
}

/// `Option<Duration>` as humantime text (`30s`, `1m 30s`), as duration flags take it.
pub mod duration {
    use super::*;

    /// Writes the duration as `30s`, `1m 30s`.
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(&humantime::format_duration(*v)),
            None => s.serialize_none(),
        }
    }

    /// Parses `30s`, `500ms`, `1m 30s`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s or 1m 30s")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(s)
                    .map(Some)
                    .map_err(|e| E::custom(format!("{s:?}: {e}")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_any(V)
    }
}

/// `Option<Vec<T>>` as a YAML sequence, or as one comma-separated string (as the flags take
/// lists), each element parsed as its flag parses it.
pub mod list {
    use super::*;

    /// Writes the list as a sequence of texts.
    pub fn serialize<T: fmt::Display, S: Serializer>(
        v: &Option<Vec<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_seq(v.iter().map(ToString::to_string)),
            None => s.serialize_none(),
        }
    }

    /// Reads `[a, b]` or `a,b`.
    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<Vec<T>>, D::Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
        D: Deserializer<'de>,
    {
        struct V<T>(PhantomData<T>);
        fn parse<T: FromStr, E: de::Error>(s: &str) -> Result<T, E>
        where
            T::Err: fmt::Display,
        {
            s.trim()
                .parse()
                .map_err(|e| E::custom(format!("{s:?}: {e}")))
        }
        impl<'de, T> Visitor<'de> for V<T>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            type Value = Option<Vec<T>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list, or one comma-separated string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                s.split(',')
                    .filter(|p| !p.trim().is_empty())
                    .map(parse)
                    .collect::<Result<_, _>>()
                    .map(Some)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(parse(&s)?);
                }
                Ok(Some(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}
