//! Transports that carry sessions. Only WebSocket for now; the seam is small
//! so the WebSocket library can be swapped without touching the session.

pub(crate) mod head;
pub mod ws;
