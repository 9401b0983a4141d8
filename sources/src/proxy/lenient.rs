//! JSON read leniently, in one pass, without building it: each type here accepts any JSON value
//! and keeps only what it looks for, reading past the rest, so one odd field in a model API's
//! response never spoils what the rest of it says, and nothing is allocated for what is skipped.

use std::marker::PhantomData;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What a lenient type makes of each kind of JSON value; a kind it does not look at is read
/// past and gives the default.
pub trait Lenient<'de>: Default {
    fn of_u64(_value: u64) -> Self {
        Self::default()
    }

    fn of_i64(_value: i64) -> Self {
        Self::default()
    }

    fn of_str(_value: &str) -> Self {
        Self::default()
    }

    fn of_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }

    fn of_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
}

/// Reads a [`Lenient`] type from any JSON value.
pub fn deserialize<'de, T: Lenient<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_any(LenientVisitor(PhantomData))
}

/// `impl Deserialize` for [`Lenient`] types, through [`deserialize`].
macro_rules! deserialize_leniently {
    ($($type:ty),* $(,)?) => {
        $(
            impl<'de> serde::Deserialize<'de> for $type {
                fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    $crate::proxy::lenient::deserialize(deserializer)
                }
            }
        )*
    };
}
pub(crate) use deserialize_leniently;

struct LenientVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_i64<E>(self, value: i64) -> Result<T, E> {
        Ok(T::of_i64(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<T, E> {
        Ok(T::of_u64(value))
    }

    fn visit_f64<E>(self, _: f64) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_str<E>(self, value: &str) -> Result<T, E> {
        Ok(T::of_str(value))
    }

    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_none<E>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<T, D::Error> {
        deserialize(inner)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::of_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::of_map(map)
    }
}

/// A token count: a whole number that is not negative; `None` for any other JSON value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count(pub Option<u64>);

impl Lenient<'_> for Count {
    fn of_u64(value: u64) -> Self {
        Count(Some(value))
    }

    fn of_i64(value: i64) -> Self {
        Count(u64::try_from(value).ok())
    }
}

/// Whether a JSON value is a string with something in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NonEmptyText(pub bool);

impl Lenient<'_> for NonEmptyText {
    fn of_str(value: &str) -> Self {
        NonEmptyText(!value.is_empty())
    }
}

deserialize_leniently!(Count, NonEmptyText);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_whole_numbers_that_are_not_negative_and_anything_else_is_read_past() {
        let count = |json: &str| serde_json::from_str::<Count>(json).map(|count| count.0);
        assert_eq!(count("12").unwrap(), Some(12));
        assert_eq!(count("-3").unwrap(), None);
        for other in [
            "2.5",
            "\"7\"",
            "null",
            "true",
            "[1, [2]]",
            r#"{"n": {"m": [1]}}"#,
        ] {
            assert_eq!(count(other).unwrap(), None, "{other}");
        }
        assert!(count("[1, ").is_err(), "broken JSON is still an error");
    }

    #[test]
    fn text_is_non_empty_only_for_a_string_with_something_in_it() {
        let text = |json: &str| serde_json::from_str::<NonEmptyText>(json).unwrap().0;
        assert!(text(r#""Hi""#));
        assert!(text(r#""\u00e9""#), "escaped text");
        assert!(!text(r#""""#));
        assert!(!text("null"));
        assert!(!text(r#"["Hi"]"#));
        assert!(!text(r#"{"text": "Hi"}"#));
    }
}
