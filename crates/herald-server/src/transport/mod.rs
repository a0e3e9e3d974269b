//! Transports that carry sessions. Only WebSocket for now; the seam is small
//! so the WebSocket library can be swapped without touching the session.

mod buffer;
pub(crate) mod frame;
pub(crate) mod head;
pub(crate) mod lane;
mod socket;
pub mod ws;
