//! Message framing on a Unix stream socket.
//!
//! ```text
//! +----------------+---------+-----------+----------------------------+
//! | body length    | fds     | reserved  | body: one JSON message     |
//! | u32 LE         | u8      | 3 x 0     | `body length` bytes        |
//! +----------------+---------+-----------+----------------------------+
//! ```
//!
//! The header says how many descriptors travel with the message (sent with `SCM_RIGHTS` on the
//! message's first byte), so a receiver detects missing or extra descriptors instead of
//! attaching them to the wrong message. A length of 0 or above [`MAX_BODY`] is refused before
//! any allocation: a hostile peer announcing 4 GiB costs nothing.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Size of the frame header.
pub const HEADER_LEN: usize = 8;
/// The largest message body: a program of 16,384 instructions (the VM's limit) is 128 KiB of
/// bytecode, at most 512 KiB as JSON numbers; 1 MiB leaves room and still bounds what a peer
/// can make us buffer.
pub const MAX_BODY: usize = 1 << 20;
/// The most descriptors one message may carry (a queue has two: its memfd and its doorbell).
pub const MAX_FDS: usize = 4;

/// Why bytes are not a valid message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A zero-length body.
    #[error("empty message")]
    Empty,
    /// A body longer than [`MAX_BODY`].
    #[error("message of {0} bytes exceeds the limit of {MAX_BODY}")]
    TooLong(u64),
    /// More descriptors than [`MAX_FDS`] announced.
    #[error("message announces {0} descriptors, the limit is {MAX_FDS}")]
    TooManyFds(u8),
    /// Reserved header bytes not zero.
    #[error("malformed header (reserved bytes set)")]
    BadHeader,
    /// The body is not a message of the expected type.
    #[error("malformed message: {0}")]
    Body(#[from] serde_json::Error),
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Body length in bytes.
    pub body_len: usize,
    /// Descriptors that travel with the message.
    pub fds: usize,
}

impl Header {
    /// Parses and checks a header.
    pub fn parse(bytes: [u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len as usize > MAX_BODY {
            return Err(FrameError::TooLong(u64::from(len)));
        }
        if bytes[4] as usize > MAX_FDS {
            return Err(FrameError::TooManyFds(bytes[4]));
        }
        if bytes[5..8] != [0, 0, 0] {
            return Err(FrameError::BadHeader);
        }
        Ok(Header {
            body_len: len as usize,
            fds: usize::from(bytes[4]),
        })
    }
}

/// Encodes a message with `fds` descriptors announced: header and body in one buffer.
pub fn encode<T: Serialize>(message: &T, fds: usize) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_BODY {
        return Err(FrameError::TooLong(body.len() as u64));
    }
    if fds > MAX_FDS {
        return Err(FrameError::TooManyFds(fds.min(255) as u8));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&[fds as u8, 0, 0, 0]);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a message body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_lengths_are_refused_before_allocation() {
        assert!(matches!(Header::parse([0; 8]), Err(FrameError::Empty)));
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(matches!(Header::parse(huge), Err(FrameError::TooLong(_))));
        assert!(matches!(
            Header::parse([1, 0, 0, 0, 9, 0, 0, 0]),
            Err(FrameError::TooManyFds(9))
        ));
        assert!(matches!(
            Header::parse([1, 0, 0, 0, 0, 1, 0, 0]),
            Err(FrameError::BadHeader)
        ));
    }

    #[test]
    fn a_message_round_trips() {
        let bytes = encode(&vec![1u32, 2, 3], 2).unwrap();
        let h = Header::parse(bytes[..8].try_into().unwrap()).unwrap();
        assert_eq!(
            h,
            Header {
                body_len: bytes.len() - 8,
                fds: 2
            }
        );
        assert_eq!(decode::<Vec<u32>>(&bytes[8..]).unwrap(), vec![1, 2, 3]);
        assert!(decode::<Vec<u32>>(b"{\"x\":1}").is_err());
    }
}
