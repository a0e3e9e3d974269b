//! Reads `/api/batch`'s `{"items":[…]}` with a count, stopping at the first
//! item past `limits.max_batch_items` (413 / 1006).
//!
//! Deserializing into `Vec<Box<RawValue>>` and checking the length afterwards
//! would hold every item first: a 16 MiB body of `0,` is 8 M items, each a
//! boxed value, hundreds of MB for one request. The visitor below keeps at
//! most `max + 1` items and stops parsing there, so the only other cost is the
//! body itself, which `limits.max_body_bytes` bounds.

use std::cell::Cell;
use std::fmt;

use axum::http::StatusCode;
use herald_protocol::ErrorCode;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::error::ApiError;

/// Parses the batch body into its raw items, at most `max` of them.
pub(crate) fn parse(bytes: &[u8], max: usize) -> Result<Vec<Box<RawValue>>, ApiError> {
    let too_many = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Body {
        max,
        too_many: &too_many,
    }
    .deserialize(&mut de)
    .and_then(|items| de.end().map(|()| items));
    match parsed {
        Ok(items) => Ok(items),
        Err(_) if too_many.get() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::MessageTooLarge,
            format!("a batch holds at most {max} items (limits.max_batch_items)"),
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "body must be {{\"items\":[…]}}: {e}"
        ))),
    }
}

/// The whole body: an object whose `items` is read by [`Items`]; other
/// fields are skipped without being kept.
struct Body<'a> {
    max: usize,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Body<'_> {
    type Value = Vec<Box<RawValue>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Body<'_> {
    type Value = Vec<Box<RawValue>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with an items array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "items" {
                if items.is_some() {
                    return Err(de::Error::duplicate_field("items"));
                }
                items = Some(map.next_value_seed(Items {
                    max: self.max,
                    too_many: self.too_many,
                })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        items.ok_or_else(|| de::Error::missing_field("items"))
    }
}

/// The `items` array, counted as it is read.
struct Items<'a> {
    max: usize,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = Vec<Box<RawValue>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = Vec<Box<RawValue>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<Box<RawValue>>()? {
            if out.len() == self.max {
                self.too_many.set(true);
                return Err(de::Error::custom("too many items"));
            }
            out.push(item);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    fn status(e: ApiError) -> u16 {
        e.into_response().status().as_u16()
    }

    #[test]
    fn reads_items_and_skips_other_fields() {
        let items = parse(br#"{"x":{"deep":[1,2]},"items":[{"a":1}, 2 ,"s"]}"#, 3).unwrap();
        let raw: Vec<&str> = items.iter().map(|i| i.get()).collect();
        assert_eq!(raw, [r#"{"a":1}"#, "2", r#""s""#]);
        assert!(parse(br#"{"items":[]}"#, 3).unwrap().is_empty());
    }

    #[test]
    fn stops_at_the_first_item_past_the_limit() {
        assert_eq!(parse(b"{\"items\":[1,2,3]}", 3).unwrap().len(), 3);
        assert_eq!(status(parse(b"{\"items\":[1,2,3,4]}", 3).unwrap_err()), 413);
        // The rest is never read: even a syntax error after the limit is 413.
        assert_eq!(
            status(parse(b"{\"items\":[1,2,3,4,oops", 3).unwrap_err()),
            413
        );
    }

    #[test]
    fn malformed_bodies_are_400() {
        for bad in [
            &b"{}"[..],
            b"[]",
            b"{\"items\":{}}",
            b"{\"items\":[1],\"items\":[2]}",
            b"{\"items\":[1]} trailing",
            b"{\"items\":[1,]}",
        ] {
            assert_eq!(
                status(parse(bad, 3).unwrap_err()),
                400,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
