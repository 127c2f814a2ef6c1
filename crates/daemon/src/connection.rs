//! One client socket at the frame level: length-delimited frames in, decoded
//! `ClientFrame`s out, `ServerFrame`s back. Byte-level details (the codec, its
//! errors, when to flush) stay in here; what a request means does not.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::protocol::decode_client_frame;
use crate::protocol::frame::encode_frame_into;
use crate::protocol::{
    buffered_frame, consume_frame, ClientFrame, DecodeError, FrameCodec, FrameTooLong, ServerFrame,
    MAX_FRAME_LEN,
};

/// The kernel's identity of the process at the other end (SO_PEERCRED and
/// SO_PEERGROUPS), read once at accept: it cannot be forged by the client and does
/// not change afterwards. These are the credentials the peer had when it called
/// `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// The effective (primary) group.
    pub gid: u32,
    pub pid: i32,
    /// The supplementary groups, so `usermod -aG automation-framework alice` is
    /// enough for a group rule to match alice's processes.
    pub groups: Vec<u32>,
}

#[cfg(test)]
impl Peer {
    /// A peer with `uid` as its uid and primary group, no other groups, for
    /// tests of what a uid may do.
    pub(crate) fn of_uid(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: 7,
            groups: Vec::new(),
        }
    }
}

pub struct Connection {
    framed: Framed<UnixStream, FrameCodec>,
    peer: Peer,
}

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("frame length exceeds the maximum of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("reading from the socket: {0}")]
    Io(#[source] io::Error),
}

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Nothing was written; the caller may send something smaller instead.
    #[error("the frame would exceed the maximum of {MAX_FRAME_LEN} bytes")]
    TooLarge,
    #[error("writing to the socket: {0}")]
    Io(#[from] io::Error),
}

/// Buffer capacity a connection keeps between frames; more is released.
const KEEP_BUFFER: usize = 64 * 1024;

// === impl Connection ===

impl Connection {
    /// Wraps an accepted stream, reading the peer's credentials first.
    ///
    /// # Errors
    /// When the kernel cannot tell who the peer is.
    pub fn new(stream: UnixStream) -> io::Result<Connection> {
        let creds = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
        let groups = peer_groups(stream.as_fd())?;
        let peer = Peer {
            uid: creds.uid(),
            gid: creds.gid(),
            pid: creds.pid(),
            groups,
        };
        Ok(Connection {
            framed: Framed::new(stream, FrameCodec::new()),
            peer,
        })
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Has the peer closed its end entirely (not only shut down its writing
    /// half)? Read after an end of stream: a client that only stopped sending
    /// still wants the replies to what it sent, but one that closed its socket
    /// never reads them, so the requests still waiting (e.g. an admission in
    /// line for a bulkhead permit) can be dropped at once. The kernel reports
    /// a full close as `POLLHUP` on the socket; a zero-timeout `poll` never
    /// blocks.
    pub fn peer_hung_up(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(
            self.framed.get_ref().as_fd(),
            PollFlags::empty(),
        )];
        poll(&mut fds, PollTimeout::ZERO).is_ok_and(|_| {
            fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
        })
    }

    /// Lowers (or restores) the largest frame this connection accepts. Before the
    /// handshake only a `Hello` may come, so a peer that has not said who it is
    /// cannot make the daemon buffer a full-size frame.
    pub fn set_max_frame_len(&mut self, limit: usize) {
        self.framed.codec_mut().set_max_frame_length(limit);
    }

    /// Reads the next frame. `Ok(None)` is a clean end of stream between frames.
    /// Cancel-safe: a partially received frame stays buffered.
    ///
    /// # Errors
    /// A [`ReadError`]; after `TooLarge`, `Truncated` or `Io` the stream is unusable.
    pub async fn read_frame(&mut self) -> Result<Option<ClientFrame>, ReadError> {
        match self.read_body().await? {
            None => Ok(None),
            Some(body) => Ok(Some(Self::decode(&body)?)),
        }
    }

    /// Reads the next frame's body, to be decoded with [`Self::decode`] where
    /// it is answered: a decoded request (a few hundred bytes) returned
    /// through the connection's future is copied at every step on the way.
    /// Cancel-safe, as [`Self::read_frame`].
    ///
    /// # Errors
    /// As [`Self::read_frame`], decoding aside.
    pub async fn read_body(&mut self) -> Result<Option<BytesMut>, ReadError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(Ok(body)) => Ok(Some(body)),
            Some(Err(err)) => Err(classify(err, self.framed.codec().max_frame_length())),
        }
    }

    /// The next frame's body when the whole frame is already in the read
    /// buffer, where it lies, to be decoded there and then taken off
    /// ([`Self::consume`]); `None` when the next read would have to wait. A
    /// pipelining client's frames arrive many to a read, and taking them
    /// this way skips what a wait costs (polling the shutdown signal and the
    /// idle timer, about 300 instructions a frame), the stream's poll (about
    /// 250 more) and a buffer of their own. The codec never holds a frame's
    /// length apart from the buffer ([`FrameCodec`]), so the buffer alone says
    /// where the next frame starts.
    ///
    /// # Errors
    /// [`ReadError::TooLarge`].
    #[inline]
    pub fn buffered(&self) -> Option<Result<&[u8], ReadError>> {
        let limit = self.framed.codec().max_frame_length();
        match buffered_frame(self.framed.read_buffer(), limit) {
            Ok(Some(body)) => Some(Ok(body)),
            Ok(None) => None,
            Err(FrameTooLong { .. }) => Some(Err(ReadError::TooLarge { limit })),
        }
    }

    /// Takes the frame whose body [`Self::buffered`] gave (`len` bytes) off
    /// the read buffer.
    #[inline]
    pub fn consume(&mut self, len: usize) {
        consume_frame(self.framed.read_buffer_mut(), len);
    }

    /// Decodes a body [`Self::read_body`] returned.
    ///
    /// # Errors
    /// [`ReadError::Decode`].
    pub fn decode(body: &[u8]) -> Result<ClientFrame, ReadError> {
        Ok(decode_client_frame(body)?)
    }

    /// Queues a frame without flushing (the codec flushes by itself when its
    /// buffer grows past its backpressure boundary).
    ///
    /// # Errors
    /// [`WriteError::TooLarge`] before anything is written, when the frame does not
    /// fit in [`MAX_FRAME_LEN`]; socket write errors.
    pub async fn feed_frame(&mut self, frame: &ServerFrame) -> Result<(), WriteError> {
        self.make_room().await?;
        self.encode_frame(frame)
    }

    /// What `Framed::feed` does first: past the backpressure boundary, writes
    /// out what is queued before more is added.
    ///
    /// # Errors
    /// Socket write errors.
    pub async fn make_room(&mut self) -> io::Result<()> {
        if self.needs_room() {
            SinkExt::<bytes::Bytes>::flush(&mut self.framed).await?;
        }
        Ok(())
    }

    /// Is the write buffer past its backpressure boundary?
    pub fn needs_room(&self) -> bool {
        self.framed.write_buffer().len() >= self.framed.backpressure_boundary()
    }

    /// Encodes a frame straight into the socket's write buffer, length prefix
    /// included, without waiting: a reply encoded before any `.await` is not
    /// kept (and copied) in the connection's future. Call [`Self::make_room`]
    /// first.
    ///
    /// # Errors
    /// [`WriteError::TooLarge`] before anything is written, when the frame does
    /// not fit in [`MAX_FRAME_LEN`].
    pub fn encode_frame<F: serde::Serialize>(&mut self, frame: &F) -> Result<(), WriteError> {
        encode_frame_into(self.framed.write_buffer_mut(), frame).map_err(encode_error)
    }

    /// [`Self::encode_frame`] for a frame a caller writes itself: `encode`
    /// appends one whole frame to the write buffer, or fails leaving it as it
    /// was (the admit and report replies, written by hand: `protocol::hot`).
    ///
    /// # Errors
    /// As [`Self::encode_frame`].
    pub fn encode_with(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), crate::protocol::EncodeError>,
    ) -> Result<(), WriteError> {
        encode(self.framed.write_buffer_mut()).map_err(encode_error)
    }

    /// Flushes queued frames unless another complete request is already buffered
    /// (its reply will follow, and one write can carry both).
    ///
    /// # Errors
    /// Socket write errors.
    pub async fn flush_unless_busy(&mut self) -> io::Result<()> {
        if !self.has_buffered_frame() {
            SinkExt::<bytes::Bytes>::flush(&mut self.framed).await?;
            self.trim_buffers();
        }
        Ok(())
    }

    /// Writes a final frame (an error before closing) and flushes it.
    ///
    /// Not through the codec's encoder: its length limit is the *read* limit,
    /// lowered to `MAX_HELLO_LEN` before the handshake, and an error frame longer
    /// than that would be dropped silently, leaving the client with a closed
    /// connection and no reason. The frame is bounded by [`MAX_FRAME_LEN`] only.
    ///
    /// # Errors
    /// Socket write errors; a frame larger than [`MAX_FRAME_LEN`].
    pub async fn write_last(&mut self, frame: &ServerFrame) -> io::Result<()> {
        encode_frame_into(self.framed.write_buffer_mut(), frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        SinkExt::<bytes::Bytes>::flush(&mut self.framed).await
    }

    /// Gives back the memory of a large frame once it has been handled: the codec's
    /// buffers grow to the largest frame seen and never shrink by themselves, so a
    /// thousand connections that each sent or received one big frame would otherwise
    /// each keep a megabyte.
    fn trim_buffers(&mut self) {
        let read = self.framed.read_buffer_mut();
        if read.is_empty() && read.capacity() > KEEP_BUFFER {
            *read = bytes::BytesMut::new();
        }
        let write = self.framed.write_buffer_mut();
        if write.is_empty() && write.capacity() > KEEP_BUFFER {
            *write = bytes::BytesMut::new();
        }
    }

    /// Is a whole frame already waiting in the read buffer?
    pub fn has_buffered_frame(&self) -> bool {
        matches!(self.buffered(), Some(Ok(_)))
    }
}

fn classify(err: io::Error, limit: usize) -> ReadError {
    if err
        .get_ref()
        .is_some_and(|inner| inner.is::<FrameTooLong>())
    {
        return ReadError::TooLarge { limit };
    }
    // tokio-util reports a partial frame at end of stream as a bare io::Error::other.
    if err.kind() == io::ErrorKind::Other && err.to_string() == "bytes remaining on stream" {
        return ReadError::Truncated;
    }
    ReadError::Io(err)
}

/// Most supplementary groups a process can have (`NGROUPS_MAX` on Linux).
const MAX_GROUPS: usize = 65_536;

/// The peer's supplementary groups at connect time (SO_PEERGROUPS, Linux 4.13+;
/// nix has no wrapper for it). On a kernel without it, the primary group from
/// SO_PEERCRED is all the policy sees.
#[allow(unsafe_code)]
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    use nix::libc;
    let width = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * width)
            .map_err(|_| io::Error::other("too many supplementary groups"))?;
        // SAFETY: `groups` is a live, writable buffer of exactly `len` bytes; the
        // kernel writes at most `len` bytes into it and stores the length it used (or,
        // with ERANGE, the length it needs) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / width;
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) if needed > groups.len() && needed <= MAX_GROUPS => {
                groups.resize(needed, 0);
            }
            Some(libc::ENOPROTOOPT) => return Ok(Vec::new()),
            _ => return Err(err),
        }
    }
}

/// A frame too large for its limit is [`WriteError::TooLarge`]; anything else
/// bincode refuses is an invalid-input error.
fn encode_error(err: crate::protocol::EncodeError) -> WriteError {
    match *err {
        crate::protocol::EncodeErrorKind::SizeLimit => WriteError::TooLarge,
        _ => WriteError::Io(io::Error::new(io::ErrorKind::InvalidInput, err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode, ErrorCode, ErrorReply};

    /// A refusal before the handshake, when the read limit is `MAX_HELLO_LEN`,
    /// still reaches the client whole, however long its message.
    #[tokio::test]
    async fn a_last_frame_is_not_bound_by_the_lowered_read_limit() {
        let (daemon_side, client_side) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(daemon_side).unwrap();
        conn.set_max_frame_len(crate::protocol::MAX_HELLO_LEN);
        let error = ServerFrame::Error(ErrorReply::new(
            ErrorCode::InvalidArgument,
            "x".repeat(2 * crate::protocol::MAX_HELLO_LEN),
        ));
        conn.write_last(&error).await.unwrap();
        drop(conn);
        let mut client = Framed::new(client_side, crate::protocol::length_codec());
        let body = client.next().await.expect("a frame").expect("readable");
        assert_eq!(decode::<ServerFrame>(&body).unwrap(), error);
    }

    /// A peer that closes in the middle of a frame is told apart from a
    /// socket error: the daemon logs it as a truncated frame, not an I/O
    /// failure.
    #[tokio::test]
    async fn a_frame_cut_by_the_peer_closing_is_truncated() {
        use tokio::io::AsyncWriteExt;
        let (daemon_side, mut client_side) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(daemon_side).unwrap();
        // A prefix announcing 100 bytes, then 10 of them, then the end.
        client_side.write_all(&100u32.to_be_bytes()).await.unwrap();
        client_side.write_all(&[0; 10]).await.unwrap();
        drop(client_side);
        let err = conn.read_frame().await.expect_err("cut short");
        assert!(matches!(err, ReadError::Truncated), "{err:?}");
    }

    /// After a large frame each way, the buffers go back to nothing once
    /// the frames are handled: a connection that once carried a megabyte
    /// does not keep it. (The read buffer gets its room back with the next
    /// frame: the large one's body was split off, and the next read's
    /// reserve reclaims the allocation once that body is dropped.)
    #[tokio::test]
    async fn the_buffers_of_a_large_frame_are_given_back() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (daemon_side, client_side) = UnixStream::pair().unwrap();
        let (mut from_daemon, mut to_daemon) = client_side.into_split();
        let mut conn = Connection::new(daemon_side).unwrap();
        let big = 4 * KEEP_BUFFER;
        let len = u32::try_from(big).unwrap();
        let writer = tokio::spawn(async move {
            to_daemon.write_all(&len.to_be_bytes()).await.unwrap();
            to_daemon.write_all(&vec![0xff; big]).await.unwrap();
            // Then a small frame (neither decodes: only their sizes matter).
            to_daemon.write_all(&[0, 0, 0, 1, 0xff]).await.unwrap();
            to_daemon
        });
        for _ in 0..2 {
            let read = conn.read_frame().await;
            assert!(matches!(read, Err(ReadError::Decode(_))), "{read:?}");
        }
        let _to_daemon = writer.await.unwrap();
        assert!(conn.framed.read_buffer().capacity() > KEEP_BUFFER);

        let reply =
            ServerFrame::Error(ErrorReply::new(ErrorCode::InvalidArgument, "x".repeat(big)));
        conn.encode_frame(&reply).unwrap();
        assert!(conn.framed.write_buffer().capacity() > KEEP_BUFFER);
        let reader = tokio::spawn(async move {
            let mut sink = vec![0; big + 1024];
            let mut got = 0;
            while got < big {
                got += from_daemon.read(&mut sink[got..]).await.unwrap();
            }
        });
        conn.flush_unless_busy().await.unwrap();
        reader.await.unwrap();
        // As with reading: the written frame was advanced past, and the next
        // frame's reserve takes the allocation back.
        let small = ServerFrame::Error(ErrorReply::new(ErrorCode::InvalidArgument, "x"));
        conn.encode_frame(&small).unwrap();
        assert!(conn.framed.write_buffer().capacity() > KEEP_BUFFER);
        conn.flush_unless_busy().await.unwrap();
        for (side, capacity) in [
            ("read", conn.framed.read_buffer().capacity()),
            ("write", conn.framed.write_buffer().capacity()),
        ] {
            assert!(
                capacity <= KEEP_BUFFER,
                "the {side} buffer kept {capacity} bytes"
            );
        }
    }
}
