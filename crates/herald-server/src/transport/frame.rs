//! RFC 6455 framing for the server side, without IO: a decoder for the
//! frames a client sends and an encoder for the frames the server sends.
//!
//! The decoder looks at one frame at a time in bytes the caller holds, and
//! says either how many bytes the next frame needs (so the caller grows its
//! buffer exactly that far, never further) or what the frame meant and how
//! many bytes it took. Every rule a client can break is checked from the
//! header, before its payload is waited for: a frame that declares 2^63 bytes
//! is refused with its first ten bytes, not after buffering them.
//!
//! It must never allocate more than `max_message` bytes for a message, and
//! never accept input after it reported a violation (the stream is no longer
//! in step with the frames, so everything after is garbage).

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;
/// Longest close reason that fits a control frame after its two-byte code.
const MAX_REASON: usize = MAX_CONTROL - 2;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Why a client's input ends the connection, with the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 1002: the frames break RFC 6455 (the reason says which rule).
    Protocol(&'static str),
    /// 1007: a text message or close reason that is not UTF-8.
    InvalidUtf8,
    /// 1008: a fragmented message left unfinished too long (the socket
    /// detects this one: time is not the decoder's business).
    FragmentTimeout,
    /// 1009: a frame or message over the size limit.
    TooBig,
}

impl Violation {
    /// The close code (RFC 6455 §7.4.1).
    pub fn code(self) -> u16 {
        match self {
            Self::Protocol(_) => 1002,
            Self::InvalidUtf8 => 1007,
            Self::FragmentTimeout => 1008,
            Self::TooBig => 1009,
        }
    }

    /// The close reason sent with the code.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Protocol(why) => why,
            Self::InvalidUtf8 => "invalid UTF-8",
            Self::FragmentTimeout => "fragmented message not finished in time",
            Self::TooBig => "frame too large",
        }
    }
}

/// What a complete frame meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole text message (one frame, or the last of its fragments).
    Text(String),
    /// A whole binary message; its bytes are not kept (the protocol has no
    /// use for them).
    Binary,
    /// A ping, with its payload (at most 125 bytes) for the pong.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// A close, with the client's code if it gave one.
    Close(Option<u16>),
}

/// The outcome of looking at the bytes the caller holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The next frame is not complete: the input must hold at least
    /// `needed` bytes (the whole frame once its header is known, else as
    /// much of the header as is needed to learn more).
    Incomplete {
        /// Bytes from the start of the input.
        needed: usize,
    },
    /// One frame, `consumed` bytes long.
    Frame {
        /// Bytes of the input the frame took.
        consumed: usize,
        /// What it meant; `None` for a fragment that does not end its message.
        event: Option<Event>,
        /// Whether the frame is a control frame or a continuation that did
        /// not finish its message: frames that cost the server work but
        /// carry no command, which the session charges to the client's rate
        /// limit. (A frame that finishes a message is charged as that
        /// message.)
        charged: bool,
    },
}

/// The kind of message being assembled from fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

/// Decodes a client's frames, assembling fragmented messages.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The message being assembled, if a first fragment came.
    open: Option<Kind>,
    /// Bytes of the open message so far (binary ones are counted, not kept).
    open_len: usize,
    /// The open text message's bytes. Handed over whole when it completes,
    /// so it holds nothing between messages.
    assembly: Vec<u8>,
    /// Set by the first violation; the decoder refuses everything after.
    failed: Option<Violation>,
}

/// A frame's header, once all of it is in.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, mask included.
    len: usize,
    payload: usize,
}

impl Decoder {
    /// A decoder refusing frames and messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            open: None,
            open_len: 0,
            assembly: Vec::new(),
            failed: None,
        }
    }

    /// Whether a fragmented message has begun and not finished.
    pub fn message_open(&self) -> bool {
        self.open.is_some()
    }

    /// Bytes the decoder holds allocated (the assembly buffer).
    pub fn buffered_capacity(&self) -> usize {
        self.assembly.capacity()
    }

    /// Looks at the next frame at the start of `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, Violation> {
        if let Some(v) = self.failed {
            return Err(v);
        }
        let result = self.decode_frame(input);
        if let Err(v) = result {
            self.failed = Some(v);
            // Nothing more will be decoded: free the partial message now.
            self.assembly = Vec::new();
        }
        result
    }

    fn decode_frame(&mut self, input: &[u8]) -> Result<Decoded, Violation> {
        let header = match self.header(input)? {
            Ok(header) => header,
            Err(needed) => return Ok(Decoded::Incomplete { needed }),
        };
        let consumed = header.len + header.payload;
        if input.len() < consumed {
            return Ok(Decoded::Incomplete { needed: consumed });
        }
        let payload = &input[header.len..consumed];
        let (event, charged) = self.frame(&header, payload)?;
        Ok(Decoded::Frame {
            consumed,
            event,
            charged,
        })
    }

    /// Parses and checks the header: `Ok(Err(needed))` while it is incomplete.
    fn header(&self, input: &[u8]) -> Result<Result<Header, usize>, Violation> {
        let protocol = |why| Err(Violation::Protocol(why));
        let [b0, b1, ..] = *input else {
            return Ok(Err(2));
        };
        if b0 & 0x70 != 0 {
            return protocol("reserved bits set (no extension was agreed)");
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let control = match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
            OP_CLOSE | OP_PING | OP_PONG => true,
            _ => return protocol("reserved opcode"),
        };
        if b1 & 0x80 == 0 {
            return protocol("client frames must be masked");
        }
        let len7 = usize::from(b1 & 0x7F);
        if control && !fin {
            return protocol("fragmented control frame");
        }
        if control && len7 > MAX_CONTROL {
            return protocol("control frame over 125 bytes");
        }
        match (opcode, self.open) {
            (OP_CONTINUATION, None) => return protocol("continuation without a message"),
            (OP_TEXT | OP_BINARY, Some(_)) => {
                return protocol("new message before the last one finished")
            }
            _ => {}
        }
        let (extended, payload) = match len7 {
            126 => {
                let Some(bytes) = input.get(2..4) else {
                    return Ok(Err(4));
                };
                (2, u64::from(u16::from_be_bytes([bytes[0], bytes[1]])))
            }
            127 => {
                let Some(bytes) = input.get(2..10) else {
                    return Ok(Err(10));
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                let n = u64::from_be_bytes(be);
                if n >> 63 != 0 {
                    return protocol("64-bit length with its top bit set");
                }
                (8, n)
            }
            n => (0, n as u64),
        };
        // Checked on the declared length, before any of the payload is
        // waited for: buffering first would let a client make us hold
        // whatever it claims.
        let so_far = if opcode == OP_CONTINUATION {
            self.open_len as u64
        } else {
            0
        };
        if payload.saturating_add(so_far) > self.max_message as u64 {
            return Err(Violation::TooBig);
        }
        let len = 2 + extended + 4;
        let Some(mask) = input.get(len - 4..len) else {
            return Ok(Err(len));
        };
        Ok(Ok(Header {
            fin,
            opcode,
            mask: [mask[0], mask[1], mask[2], mask[3]],
            len,
            // At most `max_message`, which is a usize.
            payload: payload as usize,
        }))
    }

    /// What a complete frame means, and whether it is charged.
    fn frame(&mut self, h: &Header, payload: &[u8]) -> Result<(Option<Event>, bool), Violation> {
        match h.opcode {
            OP_PING => Ok((Some(Event::Ping(unmasked(payload, h.mask))), true)),
            OP_PONG => Ok((Some(Event::Pong), true)),
            OP_CLOSE => Ok((Some(close(&unmasked(payload, h.mask))?), true)),
            OP_TEXT if h.fin => Ok((Some(text(unmasked(payload, h.mask))?), false)),
            OP_BINARY if h.fin => Ok((Some(Event::Binary), false)),
            OP_TEXT | OP_BINARY => {
                let kind = if h.opcode == OP_TEXT {
                    Kind::Text
                } else {
                    Kind::Binary
                };
                self.open = Some(kind);
                self.open_len = 0;
                self.append(kind, payload, h.mask);
                Ok((None, false))
            }
            _ => {
                // A continuation; `header` made sure a message is open.
                let kind = self.open.unwrap_or(Kind::Binary);
                self.append(kind, payload, h.mask);
                if !h.fin {
                    return Ok((None, true));
                }
                self.open = None;
                self.open_len = 0;
                let event = match kind {
                    Kind::Text => text(std::mem::take(&mut self.assembly))?,
                    Kind::Binary => Event::Binary,
                };
                Ok((Some(event), false))
            }
        }
    }

    fn append(&mut self, kind: Kind, payload: &[u8], mask: [u8; 4]) {
        self.open_len += payload.len();
        if kind == Kind::Text {
            // Exactly what this fragment needs: doubling could hold up to
            // twice the limit.
            self.assembly.reserve_exact(payload.len());
            unmask_into(payload, mask, &mut self.assembly);
        }
    }
}

fn unmasked(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len());
    unmask_into(payload, mask, &mut out);
    out
}

fn unmask_into(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

fn text(bytes: Vec<u8>) -> Result<Event, Violation> {
    String::from_utf8(bytes)
        .map(Event::Text)
        .map_err(|_| Violation::InvalidUtf8)
}

fn close(payload: &[u8]) -> Result<Event, Violation> {
    match payload {
        [] => Ok(Event::Close(None)),
        [_] => Err(Violation::Protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(code) {
                return Err(Violation::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
            Ok(Event::Close(Some(code)))
        }
    }
}

/// Codes a peer may send (RFC 6455 §7.4 and the IANA registry): 1004–1006
/// and 1015 are reserved or local-only, below 1000 and 1016–2999 unassigned.
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends an unmasked text frame.
pub(crate) fn encode_text(out: &mut Vec<u8>, text: &str) {
    encode(out, OP_TEXT, text.as_bytes());
}

/// Appends a pong answering a ping with `payload`.
pub(crate) fn encode_pong(out: &mut Vec<u8>, payload: &[u8]) {
    encode(out, OP_PONG, &payload[..payload.len().min(MAX_CONTROL)]);
}

/// Appends a close frame; a reason too long for a control frame is cut at a
/// character boundary.
pub(crate) fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(out, OP_CLOSE, &payload);
}

fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame, with every header bit under the test's control.
    fn raw(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        raw(if fin { 0x80 } else { 0 } | opcode, payload)
    }

    /// Decodes every frame in `input`: the events (with their charge), or
    /// the first violation.
    fn all(input: &[u8]) -> Result<Vec<(Option<Event>, bool)>, Violation> {
        let mut d = Decoder::new(MAX);
        let mut at = 0;
        let mut out = Vec::new();
        while at < input.len() {
            match d.decode(&input[at..])? {
                Decoded::Incomplete { needed } => {
                    panic!("incomplete at {at}: needs {needed} of {}", input.len() - at)
                }
                Decoded::Frame {
                    consumed,
                    event,
                    charged,
                } => {
                    at += consumed;
                    out.push((event, charged));
                }
            }
        }
        Ok(out)
    }

    fn one(input: &[u8]) -> Result<Event, Violation> {
        let mut events = all(input)?;
        assert_eq!(events.len(), 1);
        Ok(events.remove(0).0.expect("an event"))
    }

    fn text_event(s: &str) -> Event {
        Event::Text(s.into())
    }

    #[test]
    fn a_masked_text_frame_is_its_text() {
        assert_eq!(
            one(&frame(OP_TEXT, true, b"hello")),
            Ok(text_event("hello"))
        );
        assert_eq!(one(&frame(OP_TEXT, true, b"")), Ok(text_event("")));
    }

    #[test]
    fn lengths_of_every_encoding_decode() {
        for n in [0, 125, 126, 127, 1000, MAX] {
            let s = "a".repeat(n);
            assert_eq!(one(&frame(OP_TEXT, true, s.as_bytes())), Ok(Event::Text(s)));
        }
        // A 64-bit length for a small payload is not minimal, but legal to read.
        let mut f = vec![0x81, 0x80 | 127];
        f.extend_from_slice(&3u64.to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(b"abc");
        assert_eq!(one(&f), Ok(text_event("abc")));
    }

    #[test]
    fn control_frames_are_events_and_charged() {
        let input = [
            frame(OP_PING, true, b"abc"),
            frame(OP_PONG, true, b"x"),
            frame(OP_CLOSE, true, &[0x03, 0xE8, b'b', b'y', b'e']),
        ]
        .concat();
        assert_eq!(
            all(&input),
            Ok(vec![
                (Some(Event::Ping(b"abc".to_vec())), true),
                (Some(Event::Pong), true),
                (Some(Event::Close(Some(1000))), true),
            ])
        );
        assert_eq!(one(&frame(OP_CLOSE, true, b"")), Ok(Event::Close(None)));
        assert_eq!(one(&frame(OP_BINARY, true, b"\xff")), Ok(Event::Binary));
    }

    #[test]
    fn unmasked_frames_are_1002() {
        let v = one(&[0x81, 0x02, b'h', b'i']).unwrap_err();
        assert_eq!(v.code(), 1002);
    }

    #[test]
    fn reserved_bits_are_1002() {
        for rsv in [0x40, 0x20, 0x10] {
            let v = one(&raw(0x80 | rsv | OP_TEXT, b"x")).unwrap_err();
            assert_eq!(v.code(), 1002, "rsv {rsv:#x}");
        }
    }

    #[test]
    fn reserved_opcodes_are_1002() {
        for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let v = one(&frame(op, true, b"")).unwrap_err();
            assert_eq!(v.code(), 1002, "opcode {op:#x}");
        }
    }

    #[test]
    fn control_frames_over_125_bytes_or_fragmented_are_1002() {
        for op in [OP_PING, OP_PONG, OP_CLOSE] {
            let mut payload = vec![b'a'; 126];
            payload[..2].copy_from_slice(&1000u16.to_be_bytes());
            assert_eq!(one(&frame(op, true, &payload)).unwrap_err().code(), 1002);
            assert_eq!(one(&frame(op, false, b"")).unwrap_err().code(), 1002);
        }
        assert!(one(&frame(OP_PING, true, &[b'a'; 125])).is_ok());
    }

    #[test]
    fn a_64_bit_length_with_its_top_bit_set_is_1002_from_the_header() {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        let mut d = Decoder::new(MAX);
        assert_eq!(d.decode(&f).unwrap_err().code(), 1002);
    }

    #[test]
    fn frames_over_the_limit_are_1009_from_the_declared_length() {
        let mut d = Decoder::new(MAX);
        // Only the header of a frame one byte too big: refused already.
        let f = frame(OP_TEXT, true, &[b'a'; MAX + 1]);
        assert_eq!(d.decode(&f[..4]), Err(Violation::TooBig));
        // And a huge declared length, with no payload at all.
        let mut d = Decoder::new(MAX);
        let mut f = vec![0x81, 0x80 | 127];
        f.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(d.decode(&f), Err(Violation::TooBig));
        assert_eq!(Violation::TooBig.code(), 1009);
    }

    #[test]
    fn assembled_messages_over_the_limit_are_1009() {
        let half = vec![b'a'; MAX / 2];
        let input = [
            frame(OP_TEXT, false, &half),
            frame(OP_CONTINUATION, false, &half),
            frame(OP_CONTINUATION, true, b"a"),
        ]
        .concat();
        assert_eq!(all(&input), Err(Violation::TooBig));
        // Binary messages are counted although their bytes are not kept.
        let input = [
            frame(OP_BINARY, false, &half),
            frame(OP_CONTINUATION, false, &half),
            frame(OP_CONTINUATION, true, b"a"),
        ]
        .concat();
        assert_eq!(all(&input), Err(Violation::TooBig));
        // Exactly the limit is fine.
        let input = [
            frame(OP_TEXT, false, &half),
            frame(OP_CONTINUATION, true, &half),
        ]
        .concat();
        assert!(all(&input).is_ok());
    }

    #[test]
    fn a_continuation_without_a_message_is_1002() {
        assert_eq!(
            one(&frame(OP_CONTINUATION, true, b"x")).unwrap_err().code(),
            1002
        );
        assert_eq!(
            one(&frame(OP_CONTINUATION, false, b"x"))
                .unwrap_err()
                .code(),
            1002
        );
    }

    #[test]
    fn a_new_message_while_one_is_open_is_1002() {
        for op in [OP_TEXT, OP_BINARY] {
            let input = [frame(OP_TEXT, false, b"a"), frame(op, true, b"b")].concat();
            assert_eq!(all(&input).unwrap_err().code(), 1002);
        }
    }

    #[test]
    fn fragments_assemble_with_control_frames_between() {
        let input = [
            frame(OP_TEXT, false, b"he"),
            frame(OP_PING, true, b"1"),
            frame(OP_CONTINUATION, false, b""),
            frame(OP_CONTINUATION, false, b"ll"),
            frame(OP_PONG, true, b""),
            frame(OP_CONTINUATION, true, b"o"),
        ]
        .concat();
        assert_eq!(
            all(&input),
            Ok(vec![
                (None, false),
                (Some(Event::Ping(b"1".to_vec())), true),
                (None, true),
                (None, true),
                (Some(Event::Pong), true),
                (Some(text_event("hello")), false),
            ])
        );
    }

    #[test]
    fn the_assembly_buffer_is_handed_over_whole() {
        let mut d = Decoder::new(MAX);
        let input = [
            frame(OP_TEXT, false, &[b'a'; 600]),
            frame(OP_CONTINUATION, true, b"b"),
        ]
        .concat();
        let Ok(Decoded::Frame { consumed, .. }) = d.decode(&input) else {
            panic!()
        };
        assert!(d.message_open());
        assert!(d.buffered_capacity() >= 600);
        assert!(matches!(
            d.decode(&input[consumed..]),
            Ok(Decoded::Frame { .. })
        ));
        assert!(!d.message_open());
        assert_eq!(d.buffered_capacity(), 0);
    }

    #[test]
    fn invalid_utf8_text_is_1007() {
        assert_eq!(
            one(&frame(OP_TEXT, true, b"\xff\xfe")),
            Err(Violation::InvalidUtf8)
        );
        // Split across fragments: each part alone is not UTF-8, together it is.
        let euro = "€".as_bytes();
        let input = [
            frame(OP_TEXT, false, &euro[..1]),
            frame(OP_CONTINUATION, true, &euro[1..]),
        ]
        .concat();
        assert_eq!(all(&input).unwrap().pop().unwrap().0, Some(text_event("€")));
        let input = [
            frame(OP_TEXT, false, &euro[..1]),
            frame(OP_CONTINUATION, true, &euro[..1]),
        ]
        .concat();
        assert_eq!(all(&input), Err(Violation::InvalidUtf8));
        assert_eq!(Violation::InvalidUtf8.code(), 1007);
    }

    #[test]
    fn close_payload_rules() {
        let close = |payload: &[u8]| one(&frame(OP_CLOSE, true, payload));
        assert_eq!(close(&[0x03]).unwrap_err().code(), 1002);
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(
                close(&code.to_be_bytes()).unwrap_err().code(),
                1002,
                "code {code}"
            );
        }
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4004, 4999,
        ] {
            assert_eq!(close(&code.to_be_bytes()), Ok(Event::Close(Some(code))));
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(b"\xc3");
        assert_eq!(close(&bad_reason), Err(Violation::InvalidUtf8));
    }

    #[test]
    fn a_violation_is_final() {
        let mut d = Decoder::new(MAX);
        assert!(d.decode(&[0x81, 0x01, b'x']).is_err());
        assert!(d.decode(&frame(OP_TEXT, true, b"ok")).is_err());
    }

    #[test]
    fn every_split_point_of_a_fragmented_stream_decodes_the_same() {
        let stream = [
            frame(OP_TEXT, true, &[b'q'; 300]),
            frame(OP_TEXT, false, "fr€".as_bytes()),
            frame(OP_PING, true, b"ping"),
            frame(OP_CONTINUATION, false, &[b'x'; 130]),
            frame(OP_CONTINUATION, true, b"end"),
            frame(OP_BINARY, true, b"bin"),
            frame(OP_CLOSE, true, &[0x03, 0xE8]),
        ]
        .concat();
        let whole = all(&stream).unwrap();
        for split in 0..=stream.len() {
            // Bytes arrive in two reads split at `split`; the caller keeps
            // what was not consumed, as the socket's read buffer does.
            let mut d = Decoder::new(MAX);
            let mut held = Vec::new();
            let mut events = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                held.extend_from_slice(part);
                while let Decoded::Frame {
                    consumed,
                    event,
                    charged,
                } = d.decode(&held).unwrap()
                {
                    held.drain(..consumed);
                    events.push((event, charged));
                }
            }
            assert!(held.is_empty(), "split {split}");
            assert_eq!(events, whole, "split {split}");
        }
    }

    #[test]
    fn a_fragmented_stream_fed_one_byte_at_a_time_decodes_the_same() {
        let stream = [
            frame(OP_TEXT, false, "a€".as_bytes()),
            frame(OP_PONG, true, b""),
            frame(OP_CONTINUATION, false, &[b'b'; 126]),
            frame(OP_CONTINUATION, true, b"c"),
            frame(OP_PING, true, b"x"),
        ]
        .concat();
        let whole = all(&stream).unwrap();
        let mut d = Decoder::new(MAX);
        let mut held = Vec::new();
        let mut events = Vec::new();
        for byte in &stream {
            held.push(*byte);
            if let Decoded::Frame {
                consumed,
                event,
                charged,
            } = d.decode(&held).unwrap()
            {
                held.drain(..consumed);
                events.push((event, charged));
            }
        }
        assert!(held.is_empty());
        assert_eq!(events, whole);
    }

    #[test]
    fn byte_by_byte_input_asks_for_exactly_the_next_frame() {
        let f = frame(OP_TEXT, true, &[b'z'; 200]);
        let mut d = Decoder::new(MAX);
        for n in 0..f.len() {
            match d.decode(&f[..n]).unwrap() {
                Decoded::Incomplete { needed } => {
                    assert!(needed > n && needed <= f.len(), "{n}: {needed}");
                }
                other => panic!("{n}: {other:?}"),
            }
        }
        assert!(matches!(d.decode(&f), Ok(Decoded::Frame { consumed, .. }) if consumed == f.len()));
    }

    #[test]
    fn encoded_frames_are_unmasked_with_minimal_lengths() {
        let mut out = Vec::new();
        encode_text(&mut out, "hi");
        assert_eq!(out, b"\x81\x02hi");
        out.clear();
        encode_text(&mut out, &"a".repeat(200));
        assert_eq!(&out[..4], &[0x81, 126, 0, 200]);
        out.clear();
        encode_text(&mut out, &"a".repeat(70_000));
        assert_eq!(&out[..2], &[0x81, 127]);
        assert_eq!(&out[2..10], &70_000u64.to_be_bytes());
        out.clear();
        encode_pong(&mut out, b"p");
        assert_eq!(out, b"\x8a\x01p");
        out.clear();
        encode_close(&mut out, 1002, &"é".repeat(100));
        assert_eq!(out[0], 0x88);
        assert!(usize::from(out[1]) <= MAX_CONTROL);
        assert_eq!(&out[2..4], &1002u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
