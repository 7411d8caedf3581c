//! Interactive streams and their batons.
//!
//! A stream is one SQLite connection kept between requests. Its baton is
//! `base64url(stream id ‖ sequence number ‖ MAC)`, the MAC an HMAC-SHA256
//! (truncated to 128 bits) under a key drawn at start-up: batons cannot be
//! forged or guessed, and because the sequence number advances with every
//! request, a baton works exactly once.

use crate::errors::{self, code};
use crate::exec::StreamCtx;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use conductor_hrana::Error;
use hmac::{Hmac, Mac};
use rusqlite::Connection;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

const TAG_LEN: usize = 16;
const BATON_LEN: usize = 8 + 8 + TAG_LEN;

/// What a stream keeps between requests.
pub struct StreamState {
    pub conn: Connection,
    pub ctx: StreamCtx,
}

struct Slot {
    /// The sequence number the next valid baton carries.
    seq: u64,
    last_used: Instant,
    /// `None` while a request is using the stream.
    state: Option<StreamState>,
    /// Whether its connection was inside a transaction when last handed in.
    in_transaction: bool,
}

/// A stream checked out for one request.
pub struct Lease {
    pub id: u64,
    /// The baton that continues the stream after this request.
    pub next_baton: String,
}

pub struct Streams {
    key: [u8; 32],
    slots: Mutex<HashMap<u64, Slot>>,
    max_streams: usize,
    idle_timeout: Duration,
}

impl Streams {
    pub fn new(max_streams: usize, idle_timeout: Duration) -> Streams {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("OS random source");
        Streams {
            key,
            slots: Mutex::new(HashMap::new()),
            max_streams,
            idle_timeout,
        }
    }

    fn tag(&self, id: u64, seq: u64) -> [u8; TAG_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(&id.to_le_bytes());
        mac.update(&seq.to_le_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    fn baton(&self, id: u64, seq: u64) -> String {
        let mut raw = [0u8; BATON_LEN];
        raw[..8].copy_from_slice(&id.to_le_bytes());
        raw[8..16].copy_from_slice(&seq.to_le_bytes());
        raw[16..].copy_from_slice(&self.tag(id, seq));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Registers a new stream, checked out by the caller, who then opens its
    /// connection and hands it in with [`Streams::finish`].
    pub fn open(&self) -> Result<Lease, Error> {
        let mut slots = self.slots.lock().unwrap();
        if slots.len() >= self.max_streams {
            return Err(errors::error(
                code::TOO_MANY_STREAMS,
                format!("the node has {} open streams, its limit", slots.len()),
            ));
        }
        let id = loop {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).expect("OS random source");
            let id = u64::from_le_bytes(b);
            if !slots.contains_key(&id) {
                break id;
            }
        };
        slots.insert(
            id,
            Slot {
                seq: 1,
                last_used: Instant::now(),
                state: None,
                in_transaction: false,
            },
        );
        Ok(Lease {
            id,
            next_baton: self.baton(id, 1),
        })
    }

    /// Checks a baton out: the stream's state is the caller's until
    /// [`Streams::finish`]. Every failure is the client's (HTTP 400).
    pub fn acquire(&self, baton: &str) -> Result<(Lease, StreamState), Error> {
        let invalid = || errors::error(code::BATON_INVALID, "the baton is not valid for this node");
        let raw = URL_SAFE_NO_PAD.decode(baton).map_err(|_| invalid())?;
        if raw.len() != BATON_LEN {
            return Err(invalid());
        }
        let id = u64::from_le_bytes(raw[..8].try_into().unwrap());
        let seq = u64::from_le_bytes(raw[8..16].try_into().unwrap());
        if !bool::from(self.tag(id, seq).ct_eq(&raw[16..])) {
            return Err(invalid());
        }
        let mut slots = self.slots.lock().unwrap();
        let Some(slot) = slots.get_mut(&id) else {
            return Err(errors::error(
                code::STREAM_EXPIRED,
                format!(
                    "the stream is closed or expired (idle streams expire after {} ms)",
                    self.idle_timeout.as_millis()
                ),
            ));
        };
        if seq != slot.seq {
            return Err(errors::error(
                code::BATON_REUSED,
                "the baton was already used; use the one from the latest response",
            ));
        }
        let Some(state) = slot.state.take() else {
            return Err(errors::error(
                code::STREAM_BUSY,
                "the stream is busy with another request",
            ));
        };
        slot.seq += 1;
        Ok((
            Lease {
                id,
                next_baton: self.baton(id, slot.seq),
            },
            state,
        ))
    }

    /// Hands a checked-out stream back. `None` state (closed, or it could
    /// not be opened) forgets the stream.
    pub fn finish(&self, id: u64, state: Option<StreamState>) {
        let mut slots = self.slots.lock().unwrap();
        match state {
            Some(state) => {
                if let Some(slot) = slots.get_mut(&id) {
                    slot.in_transaction = !state.conn.is_autocommit();
                    slot.state = Some(state);
                    slot.last_used = Instant::now();
                }
            }
            None => {
                slots.remove(&id);
            }
        }
    }

    /// Removes a stream that is not checked out; its state, for the caller
    /// to roll back.
    pub fn take(&self, id: u64) -> Option<StreamState> {
        let mut slots = self.slots.lock().unwrap();
        let state = slots.get_mut(&id)?.state.take()?;
        slots.remove(&id);
        Some(state)
    }

    /// Removes the streams idle for longer than the timeout; the caller rolls
    /// their transactions back (off the async threads).
    pub fn take_expired(&self) -> Vec<StreamState> {
        let now = Instant::now();
        let mut out = Vec::new();
        self.slots.lock().unwrap().retain(|_, slot| {
            let expired =
                slot.state.is_some() && now.duration_since(slot.last_used) > self.idle_timeout;
            if expired {
                out.extend(slot.state.take());
            }
            !expired
        });
        out
    }

    /// Removes every idle stream (shutdown).
    pub fn take_all(&self) -> Vec<StreamState> {
        let mut slots = self.slots.lock().unwrap();
        slots.drain().filter_map(|(_, s)| s.state).collect()
    }

    pub fn open_count(&self) -> usize {
        self.slots.lock().unwrap().len()
    }

    /// Open streams whose connection is inside a transaction (as of the end
    /// of their last request).
    pub fn in_transaction_count(&self) -> usize {
        let slots = self.slots.lock().unwrap();
        slots.values().filter(|s| s.in_transaction).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> StreamState {
        StreamState {
            conn: Connection::open_in_memory().unwrap(),
            ctx: StreamCtx::default(),
        }
    }

    #[test]
    fn a_baton_works_once() {
        let s = Streams::new(10, Duration::from_secs(10));
        let lease = s.open().unwrap();
        s.finish(lease.id, Some(state()));
        let (l2, st) = s.acquire(&lease.next_baton).unwrap();
        s.finish(l2.id, Some(st));
        let e = s.acquire(&lease.next_baton).err().unwrap();
        assert_eq!(e.code.as_deref(), Some(code::BATON_REUSED));
        assert!(s.acquire(&l2.next_baton).is_ok());
    }

    #[test]
    fn forged_batons_are_refused() {
        let s = Streams::new(10, Duration::from_secs(10));
        let lease = s.open().unwrap();
        s.finish(lease.id, Some(state()));
        let mut raw = URL_SAFE_NO_PAD.decode(&lease.next_baton).unwrap();
        raw[8] ^= 1; // another sequence number, same tag
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        for bad in [forged.as_str(), "", "x", "not a baton at all!!"] {
            let e = s.acquire(bad).err().unwrap();
            assert_eq!(e.code.as_deref(), Some(code::BATON_INVALID), "{bad}");
        }
        let other = Streams::new(10, Duration::from_secs(10));
        assert!(other.acquire(&lease.next_baton).is_err());
    }

    #[test]
    fn idle_streams_expire() {
        let s = Streams::new(10, Duration::from_millis(0));
        let lease = s.open().unwrap();
        s.finish(lease.id, Some(state()));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(s.take_expired().len(), 1);
        assert_eq!(s.open_count(), 0);
        let e = s.acquire(&lease.next_baton).err().unwrap();
        assert_eq!(e.code.as_deref(), Some(code::STREAM_EXPIRED));
    }
}
