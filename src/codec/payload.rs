//! A request body as received: in memory when small, in an unnamed temporary file (in
//! `$TMPDIR`, gone when closed) when it crossed the spooling threshold, so a body of a
//! gigabyte does not live in RAM. Parsers read it through [`Payload::into_reader`].

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};

use crate::model::preprocess::rows::SeekRead;

/// A request body, in memory or spooled to disk.
pub(crate) enum Payload {
    /// The whole body.
    Memory(Vec<u8>),
    /// A temporary file holding the whole body.
    Spooled {
        /// The file (unlinked; deleted when dropped).
        file: File,
        /// Its length in bytes.
        len_bytes: u64,
    },
}

impl Payload {
    /// The body's length in bytes.
    pub(crate) fn len_bytes(&self) -> u64 {
        match self {
            Payload::Memory(bytes) => bytes.len() as u64,
            Payload::Spooled { len_bytes, .. } => *len_bytes,
        }
    }

    /// The whole body in memory (formats that need it at once: one image, one JSON document).
    pub(crate) fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        match self {
            Payload::Memory(bytes) => Ok(bytes),
            Payload::Spooled { file, len_bytes } => {
                let mut bytes = Vec::with_capacity(usize::try_from(len_bytes).unwrap_or(0));
                Self::rewound(file)?.read_to_end(&mut bytes)?;
                Ok(bytes)
            }
        }
    }

    /// The body as a buffered reader from its first byte.
    pub(crate) fn into_reader(self) -> std::io::Result<Box<dyn BufRead + Send>> {
        match self {
            Payload::Memory(bytes) => Ok(Box::new(Cursor::new(bytes))),
            Payload::Spooled { file, .. } => {
                // Large reads: records are often hundreds of kilobytes of base64.
                Ok(Box::new(BufReader::with_capacity(
                    1 << 20,
                    Self::rewound(file)?,
                )))
            }
        }
    }

    /// Runs `look` on the body from its first byte, leaving the payload as it was (a header
    /// probe before choosing how to read the body).
    pub(crate) fn peek<T>(
        &mut self,
        look: impl FnOnce(&mut dyn SeekRead) -> T,
    ) -> std::io::Result<T> {
        match self {
            Payload::Memory(bytes) => Ok(look(&mut Cursor::new(bytes.as_slice()))),
            Payload::Spooled { file, .. } => {
                file.seek(SeekFrom::Start(0))?;
                Ok(look(&mut BufReader::new(&*file)))
            }
        }
    }

    /// The body as a seekable reader from its first byte (TIFF directories point anywhere).
    pub(crate) fn into_seek_reader(self) -> std::io::Result<Box<dyn SeekRead>> {
        match self {
            Payload::Memory(bytes) => Ok(Box::new(Cursor::new(bytes))),
            Payload::Spooled { file, .. } => Ok(Box::new(BufReader::with_capacity(
                1 << 20,
                Self::rewound(file)?,
            ))),
        }
    }

    fn rewound(mut file: File) -> std::io::Result<File> {
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_spooled_body_reads_back_whole_from_its_start() {
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(b"line one\nline two").expect("writes");
        let spooled = || -> Payload {
            Payload::Spooled {
                file: file.try_clone().expect("clone"),
                len_bytes: 17,
            }
        };
        assert_eq!(spooled().len_bytes(), 17);
        assert_eq!(
            spooled().into_bytes().expect("reads"),
            b"line one\nline two"
        );
        let lines: Vec<String> = spooled()
            .into_reader()
            .expect("reads")
            .lines()
            .map_while(Result::ok)
            .collect();
        assert_eq!(lines, ["line one", "line two"]);
    }
}
