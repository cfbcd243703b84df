//! The bytes of a file being sent, appended block by block to DATA packets. A file on disk is
//! read a chunk at a time on tokio's blocking pool, the next chunk while the current one is
//! sent: tokio's own file reads hop to the blocking pool for every read, and a buffered reader
//! on top of them copied each block twice and hopped every few blocks (with 64 KiB blocks, every
//! fourth) on the transfer's critical path, which kept large-block transfers behind tftpd-hpa.

use bytes::Bytes;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

/// A converting reader (netascii).
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// Chunks read from disk at a time: at least this much...
const MINIMUM_CHUNK: usize = 256 * 1024;
/// ...and at most this much (a transfer holds two: the one being sent and the next).
const MAXIMUM_CHUNK: usize = 4 * 1024 * 1024;

pub enum Blocks {
    /// Generated files, kept in memory: blocks are copied straight out.
    Memory { bytes: Bytes, at: usize },
    /// A file on disk.
    Disk(DiskChunks),
    /// Bytes converted on the way (netascii).
    Stream(Reader),
}

impl Blocks {
    pub fn memory(bytes: Bytes) -> Blocks {
        Blocks::Memory { bytes, at: 0 }
    }

    /// Opens `path` and starts reading its first chunk.
    pub async fn disk(
        path: std::path::PathBuf,
        block_size: usize,
        window_size: usize,
    ) -> io::Result<Blocks> {
        let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(io::Error::other)??;
        // Each chunk costs two thread switches (to the blocking pool and back): 64 windows a
        // chunk make them rare next to the blocks' own round trips.
        let chunk_size = (64 * block_size * window_size).clamp(MINIMUM_CHUNK, MAXIMUM_CHUNK);
        let mut chunks = DiskChunks {
            file: Arc::new(file),
            chunk_size,
            next_offset: 0,
            current: Vec::new(),
            at: 0,
            ahead: None,
        };
        chunks.ahead = Some(chunks.read_ahead());
        Ok(Blocks::Disk(chunks))
    }

    /// Appends up to `block_size` bytes to `data`; fewer only at the end of the file.
    pub async fn append_block(
        &mut self,
        data: &mut Vec<u8>,
        block_size: usize,
    ) -> io::Result<usize> {
        match self {
            Blocks::Memory { bytes, at } => {
                let take = block_size.min(bytes.len() - *at);
                data.extend_from_slice(&bytes[*at..*at + take]);
                *at += take;
                Ok(take)
            }
            Blocks::Disk(chunks) => chunks.append_block(data, block_size).await,
            Blocks::Stream(reader) => read_block(reader, data, block_size).await,
        }
    }
}

pub struct DiskChunks {
    file: Arc<std::fs::File>,
    chunk_size: usize,
    /// Where the next chunk to read starts.
    next_offset: u64,
    current: Vec<u8>,
    /// How much of `current` is sent.
    at: usize,
    /// The next chunk, being read; `None` once a short chunk (the file's end) was taken.
    ahead: Option<JoinHandle<io::Result<Vec<u8>>>>,
}

impl DiskChunks {
    async fn append_block(&mut self, data: &mut Vec<u8>, block_size: usize) -> io::Result<usize> {
        let mut filled = 0;
        while filled < block_size {
            if self.at == self.current.len() && !self.take_next_chunk().await? {
                break;
            }
            let take = (block_size - filled).min(self.current.len() - self.at);
            data.extend_from_slice(&self.current[self.at..self.at + take]);
            self.at += take;
            filled += take;
        }
        Ok(filled)
    }

    /// Makes the chunk read ahead the current one and starts reading the one after; false at
    /// the end of the file.
    async fn take_next_chunk(&mut self) -> io::Result<bool> {
        let Some(ahead) = self.ahead.take() else {
            return Ok(false);
        };
        let chunk = ahead.await.map_err(io::Error::other)??;
        if chunk.len() == self.chunk_size {
            self.ahead = Some(self.read_ahead());
        }
        self.current = chunk;
        self.at = 0;
        Ok(!self.current.is_empty())
    }

    /// Reads the chunk at `next_offset` on the blocking pool (short only at the end of the file).
    fn read_ahead(&mut self) -> JoinHandle<io::Result<Vec<u8>>> {
        let (file, offset, size) = (Arc::clone(&self.file), self.next_offset, self.chunk_size);
        self.next_offset += size as u64;
        tokio::task::spawn_blocking(move || {
            let mut chunk = vec![0; size];
            let mut filled = 0;
            while filled < size {
                match file.read_at(&mut chunk[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(count) => filled += count,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
            chunk.truncate(filled);
            Ok(chunk)
        })
    }
}

/// Appends up to `block_size` bytes of `reader` to `data`; fewer only at the end.
async fn read_block(
    reader: &mut Reader,
    data: &mut Vec<u8>,
    block_size: usize,
) -> io::Result<usize> {
    let start = data.len();
    data.resize(start + block_size, 0);
    let mut filled = 0;
    while filled < block_size {
        let count = reader.read(&mut data[start + filled..]).await?;
        if count == 0 {
            break;
        }
        filled += count;
    }
    data.truncate(start + filled);
    Ok(filled)
}
