//! The bytes of a file being sent, appended block by block to DATA packets. A transfer runs on
//! a thread of its own (see `transfer`), so a file on disk is read where it is sent with
//! `pread`: small blocks out of a chunk (16 blocks, 64 KiB to 1 MiB, never more than the file),
//! one system call per ~45 blocks of 1468 bytes (a `pread` per block cost 7 % with RFC 7440
//! windows, where the sender, not the round trip, sets the pace); large blocks straight into
//! their packet (see [`DIRECT_READ_BLOCK`]). The file is in the page cache after the first
//! machine's transfer.

use bytes::Bytes;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// A converting reader (netascii).
pub type Reader = Box<dyn Read + Send>;

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

    /// A chunk holds 16 blocks, at least 64 KiB and at most 1 MiB, and never more than the
    /// file's `size` as resolved: hundreds of transfers of a boot loader run at once when a
    /// rack powers on, each with its chunk (256 KiB each raised a 1,000-machine bench's peak
    /// by 100 MiB).
    /// Blocks of [`DIRECT_READ_BLOCK`] and more are read straight into the packet instead (see
    /// there).
    pub fn disk(path: &std::path::Path, size: u64, block_size: usize) -> io::Result<Blocks> {
        let wanted = if block_size >= DIRECT_READ_BLOCK {
            0
        } else {
            (16 * block_size).clamp(MINIMUM_CHUNK, MAXIMUM_CHUNK)
        };
        let chunk_size = usize::try_from(size).unwrap_or(wanted).min(wanted);
        Ok(Blocks::Disk(DiskChunks {
            file: std::fs::File::open(path)?,
            chunk_size,
            next_offset: 0,
            chunk: Vec::new(),
            at: 0,
        }))
    }

    /// Appends up to `block_size` bytes to `data`; fewer only at the end of the file.
    pub fn append_block(&mut self, data: &mut Vec<u8>, block_size: usize) -> io::Result<usize> {
        match self {
            Blocks::Memory { bytes, at } => {
                let take = block_size.min(bytes.len() - *at);
                data.extend_from_slice(&bytes[*at..*at + take]);
                *at += take;
                Ok(take)
            }
            Blocks::Disk(chunks) => chunks.append_block(data, block_size),
            Blocks::Stream(reader) => fill(data, block_size, |buffer| reader.read(buffer)),
        }
    }
}

/// From this block size on, each block is read with its own `pread` straight into the DATA
/// packet, as tftpd-hpa reads: the system call is small next to the block, and in lock-step a
/// chunk's read (1 MiB every 16 blocks of 65464) and the extra copy of each block out of it lie
/// on the round trip (0.79-0.89x tftpd-hpa at blksize 65464, against 0.94-1.02x read straight).
const DIRECT_READ_BLOCK: usize = 8 * 1024;
const MINIMUM_CHUNK: usize = 64 * 1024;
const MAXIMUM_CHUNK: usize = 1024 * 1024;

pub struct DiskChunks {
    file: std::fs::File,
    /// 0: every block read straight into its packet.
    chunk_size: usize,
    /// Where the chunk after this one starts in the file.
    next_offset: u64,
    chunk: Vec<u8>,
    /// How much of `chunk` is handed out.
    at: usize,
}

impl DiskChunks {
    /// Appends up to `block_size` bytes of the file to `data`; fewer only at its end.
    fn append_block(&mut self, data: &mut Vec<u8>, block_size: usize) -> io::Result<usize> {
        if self.chunk_size == 0 {
            let (file, offset) = (&self.file, &mut self.next_offset);
            return fill(data, block_size, |buffer| {
                read_at_offset(file, buffer, offset)
            });
        }
        let mut filled = 0;
        while filled < block_size {
            if self.at == self.chunk.len() && !self.read_next_chunk()? {
                break;
            }
            let take = (block_size - filled).min(self.chunk.len() - self.at);
            data.extend_from_slice(&self.chunk[self.at..self.at + take]);
            self.at += take;
            filled += take;
        }
        Ok(filled)
    }

    /// Reads the next chunk (short only at the end of the file); false at the end.
    fn read_next_chunk(&mut self) -> io::Result<bool> {
        let (file, offset) = (&self.file, &mut self.next_offset);
        self.chunk.clear();
        let count = fill(&mut self.chunk, self.chunk_size, |buffer| {
            read_at_offset(file, buffer, offset)
        })?;
        self.at = 0;
        Ok(count > 0)
    }
}

/// One `pread` at `offset`, which moves on by what was read.
fn read_at_offset(file: &std::fs::File, buffer: &mut [u8], offset: &mut u64) -> io::Result<usize> {
    let count = file.read_at(buffer, *offset)?;
    *offset += count as u64;
    Ok(count)
}

/// Appends up to `block_size` bytes to `data` from repeated `read`s, which return 0 at the end.
fn fill(
    data: &mut Vec<u8>,
    block_size: usize,
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
) -> io::Result<usize> {
    let start = data.len();
    data.resize(start + block_size, 0);
    let mut filled = 0;
    while filled < block_size {
        match read(&mut data[start + filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                data.truncate(start);
                return Err(error);
            }
        }
    }
    data.truncate(start + filled);
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `length` bytes (a pattern) opened for `block_size` blocks.
    fn file_of(length: u32, block_size: usize) -> (tempfile::TempDir, Vec<u8>, Blocks) {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("file");
        let content: Vec<u8> = (0..length).map(|index| (index % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        let blocks = Blocks::disk(&path, content.len() as u64, block_size).expect("open");
        (directory, content, blocks)
    }

    /// Every block's payload (after a 4-byte header) until the short last one, and their sizes.
    fn send_all(blocks: &mut Blocks, block_size: usize) -> (Vec<u8>, Vec<usize>) {
        let (mut sent, mut sizes) = (Vec::new(), Vec::new());
        loop {
            let mut data = vec![0xAA; 4];
            let payload = blocks.append_block(&mut data, block_size).expect("read");
            assert_eq!(data.len(), 4 + payload, "the payload follows the header");
            sent.extend_from_slice(&data[4..]);
            sizes.push(payload);
            if payload < block_size {
                return (sent, sizes);
            }
        }
    }

    #[test]
    fn a_file_on_disk_comes_out_in_whole_blocks_and_a_short_last_one() {
        let (_directory, content, mut blocks) = file_of(2500, 1024);
        let (sent, sizes) = send_all(&mut blocks, 1024);
        assert_eq!(sizes, vec![1024, 1024, 452]);
        assert_eq!(sent, content);
    }

    #[test]
    fn large_blocks_are_read_straight_into_the_packet_and_come_out_whole() {
        let (_directory, content, mut blocks) = file_of(70_000, 16_384);
        assert!(matches!(&blocks, Blocks::Disk(chunks) if chunks.chunk_size == 0));
        let (sent, sizes) = send_all(&mut blocks, 16_384);
        assert_eq!(
            sizes.last(),
            Some(&(70_000 % 16_384)),
            "the short last block"
        );
        assert_eq!(sent, content);
    }
}
