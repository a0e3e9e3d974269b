//! Parsers never panic on any input, agree with the spec's grammar, and read
//! back exactly what the server writes.

use herald_protocol::{parse_command, validate_channel, Command, Cursor, ErrorCode, Since, MAX_ID};
use proptest::prelude::*;
use serde_json::{json, Value};

const CHANNEL_RE: &str = r"^[A-Za-z0-9_\-.:@]{1,200}$";

fn channel() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:@-]{1,200}"
}

fn epoch() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{1,64}"
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like commands: known field names, values of any type.
fn command_like() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("type"),
        Just("id"),
        Just("token"),
        Just("user"),
        Just("channel"),
        Just("since"),
        Just("notifications_since"),
        Just("data"),
        Just("other"),
    ];
    let kind = prop_oneof![
        Just(json!("connect")),
        Just(json!("subscribe")),
        Just(json!("unsubscribe")),
        Just(json!("publish")),
        Just(json!("refresh")),
        Just(json!("ping")),
        Just(json!("pong")),
    ];
    (
        kind,
        prop::collection::vec((field, json_value()), 0..6),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(kind, fields, id)| {
            let mut object = json!({"type": kind});
            for (name, value) in fields {
                object[name] = value;
            }
            if let Some(id) = id {
                object["id"] = json!(id);
            }
            object
        })
}

fn check_outcome(text: &str) {
    match parse_command(text) {
        Ok(envelope) => {
            assert!(envelope.id.is_none_or(|id| id <= MAX_ID));
            if let Command::Subscribe { channel, .. }
            | Command::Unsubscribe { channel }
            | Command::Publish { channel, .. } = envelope.command
            {
                assert!(validate_channel(&channel).is_ok());
            }
        }
        Err((id, e)) => {
            assert!(id.is_none_or(|id| id <= MAX_ID));
            assert!(matches!(
                e.code,
                ErrorCode::BadRequest | ErrorCode::InvalidChannel
            ));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_command_never_panics_on_any_string(text in ".{0,300}") {
        check_outcome(&text);
    }

    #[test]
    fn parse_command_never_panics_on_any_json(value in json_value()) {
        check_outcome(&value.to_string());
    }

    #[test]
    fn parse_command_handles_command_shaped_objects(value in command_like()) {
        check_outcome(&value.to_string());
        // An `id` the protocol accepts is echoed even when the rest is bad.
        if let Some(id) = value.get("id").and_then(Value::as_u64) {
            let echoed = match parse_command(&value.to_string()) {
                Ok(e) => e.id,
                Err((id, _)) => id,
            };
            prop_assert_eq!(echoed, (id <= MAX_ID).then_some(id));
        }
    }

    #[test]
    fn a_valid_subscribe_parses_to_what_was_sent(
        name in channel(),
        since in proptest::option::of((epoch(), any::<u64>())),
        id in 0..=MAX_ID,
    ) {
        let mut frame = json!({"type": "subscribe", "id": id, "channel": name});
        if let Some((e, o)) = &since {
            frame["since"] = json!(format!("{e}:{o}"));
        }
        let envelope = parse_command(&frame.to_string()).unwrap();
        prop_assert_eq!(envelope.id, Some(id));
        match envelope.command {
            Command::Subscribe { channel, since: parsed } => {
                prop_assert_eq!(channel, name);
                prop_assert_eq!(parsed, since.map(|(e, o)| Cursor::new(e, o)));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn channel_validation_agrees_with_the_spec_regex(
        name in prop_oneof![channel(), ".{0,210}", "[a-z:./ #\\x00-\\x1f]{0,20}"],
    ) {
        let re = regex::Regex::new(CHANNEL_RE).unwrap();
        prop_assert_eq!(validate_channel(&name).is_ok(), re.is_match(&name), "{:?}", name);
    }

    #[test]
    fn long_channel_names_are_refused(extra in 1usize..100) {
        let name = "a".repeat(200 + extra);
        prop_assert!(validate_channel(&name).is_err());
    }

    #[test]
    fn cursors_round_trip(e in epoch(), offset in any::<u64>()) {
        let cursor = Cursor::new(e, offset);
        prop_assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
    }

    #[test]
    fn cursor_parse_never_panics_and_reads_back(text in ".{0,100}") {
        if let Ok(cursor) = Cursor::parse(&text) {
            prop_assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
        }
    }

    #[test]
    fn since_reads_millis_cursors_and_rfc3339(
        ms in 0u64..253_402_300_799_000,
        e in epoch(),
        offset in any::<u64>(),
    ) {
        prop_assert_eq!(Since::parse(&ms.to_string()), Ok(Since::Time(ms)));
        let cursor = Cursor::new(e, offset);
        prop_assert_eq!(Since::parse(&cursor.to_string()), Ok(Since::Cursor(cursor)));
        // The same instant written as RFC 3339 (UTC, milliseconds).
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap();
        let text = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        );
        prop_assert_eq!(Since::parse(&text), Ok(Since::Time(ms)), "{}", text);
    }

    #[test]
    fn since_parse_never_panics(text in ".{0,200}") {
        let _ = Since::parse(&text);
    }
}
