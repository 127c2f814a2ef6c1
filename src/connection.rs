//! One client socket at the frame level: length-delimited frames in, decoded
//! `ClientFrame`s out, `ServerFrame`s back. Byte-level details (the codec, its
//! errors, when to flush) stay in here; what a request means does not.

use std::io;

use futures_util::{SinkExt, StreamExt};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::protocol::frame::{decode_client_frame, encode, length_codec};
use crate::protocol::{ClientFrame, DecodeError, ServerFrame, MAX_FRAME_LEN};

/// The kernel's identity of the process at the other end (SO_PEERCRED), read once
/// at accept: it cannot be forged by the client and does not change afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

pub struct Connection {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
    peer: Peer,
}

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("frame length exceeds the maximum of {MAX_FRAME_LEN} bytes")]
    TooLarge,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("reading from the socket: {0}")]
    Io(#[source] io::Error),
}

// === impl Connection ===

impl Connection {
    /// Wraps an accepted stream, reading the peer's credentials first.
    ///
    /// # Errors
    /// When the kernel cannot tell who the peer is.
    pub fn new(stream: UnixStream) -> io::Result<Connection> {
        let creds = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
        let peer = Peer {
            uid: creds.uid(),
            gid: creds.gid(),
            pid: creds.pid(),
        };
        Ok(Connection {
            framed: Framed::new(stream, length_codec()),
            peer,
        })
    }

    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// Reads the next frame. `Ok(None)` is a clean end of stream between frames.
    /// Cancel-safe: a partially received frame stays buffered.
    ///
    /// # Errors
    /// A [`ReadError`]; after `TooLarge`, `Truncated` or `Io` the stream is unusable.
    pub async fn read_frame(&mut self) -> Result<Option<ClientFrame>, ReadError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(Ok(body)) => Ok(Some(decode_client_frame(&body)?)),
            Some(Err(err)) => Err(classify(err)),
        }
    }

    /// Queues a frame without flushing (the codec flushes by itself when its
    /// buffer grows past its backpressure boundary).
    ///
    /// # Errors
    /// Socket write errors; `InvalidInput` when the frame is too large to send.
    pub async fn feed_frame(&mut self, frame: &ServerFrame) -> io::Result<()> {
        let body = encode(frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.framed.feed(bytes::Bytes::from(body)).await
    }

    /// Flushes queued frames unless another complete request is already buffered
    /// (its reply will follow, and one write can carry both).
    ///
    /// # Errors
    /// Socket write errors.
    pub async fn flush_unless_busy(&mut self) -> io::Result<()> {
        if !self.has_buffered_frame() {
            SinkExt::<bytes::Bytes>::flush(&mut self.framed).await?;
        }
        Ok(())
    }

    /// Writes a final frame (an error before closing) and flushes it.
    ///
    /// # Errors
    /// Socket write errors.
    pub async fn write_last(&mut self, frame: &ServerFrame) -> io::Result<()> {
        let body = encode(frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.framed.send(bytes::Bytes::from(body)).await
    }

    /// Is a whole frame already waiting in the read buffer?
    fn has_buffered_frame(&self) -> bool {
        let buf = self.framed.read_buffer();
        match buf.get(..4) {
            Some(prefix) => {
                let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
                buf.len() >= 4 + len
            }
            None => false,
        }
    }
}

fn classify(err: io::Error) -> ReadError {
    if err
        .get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
    {
        return ReadError::TooLarge;
    }
    // tokio-util reports a partial frame at end of stream as a bare io::Error::other.
    if err.kind() == io::ErrorKind::Other && err.to_string() == "bytes remaining on stream" {
        return ReadError::Truncated;
    }
    ReadError::Io(err)
}
