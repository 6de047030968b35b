//! Result data files: CSV written through a hashing writer, so the MD5 and size that go
//! into the manifest are computed while the bytes are written, not by a second read.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::results::manifest::DataFile;
use crate::results::mode::ResultsMode;
use crate::ScanError;

/// A writer that counts and hashes every byte it passes on.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Md5,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Md5::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A CSV data file being written for one task, in the dialect of PostgreSQL's
/// `COPY … (FORMAT csv)`: every value is quoted (`"` doubled inside), and a NULL is
/// an empty unquoted field. COPY reads an unquoted empty field as NULL and a quoted
/// one (`""`) as an empty string, so the two stay distinct. The bytes go through a
/// [`RawFile`], which hashes and counts them.
pub struct CsvFile {
    file: RawFile,
    /// One record's bytes, reused.
    line: Vec<u8>,
}

/// Append `fields` to `line` as one CSV record (see [`CsvFile`]).
fn encode_record<'a>(line: &mut Vec<u8>, fields: impl IntoIterator<Item = Option<&'a [u8]>>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        if let Some(value) = field {
            line.push(b'"');
            for &b in value {
                if b == b'"' {
                    line.push(b'"');
                }
                line.push(b);
            }
            line.push(b'"');
        }
    }
    line.push(b'\n');
}

impl CsvFile {
    /// Create `dir/name` (it must not exist yet) with `mode`, and write the header row.
    pub fn create(
        dir: &Path,
        name: &str,
        columns: &[&str],
        mode: ResultsMode,
    ) -> Result<Self, ScanError> {
        let columns_owned = columns.iter().map(|c| c.to_string()).collect();
        let mut file = CsvFile {
            file: RawFile::create(dir, name, columns_owned, mode)?,
            line: Vec::with_capacity(256),
        };
        file.put(columns.iter().map(|c| Some(c.as_bytes())))?;
        Ok(file)
    }

    fn put<'a>(
        &mut self,
        fields: impl IntoIterator<Item = Option<&'a [u8]>>,
    ) -> Result<(), ScanError> {
        self.line.clear();
        encode_record(&mut self.line, fields);
        self.file.write_all(&self.line)
    }

    /// Append one record of values (none of them NULL).
    pub fn write<I, T>(&mut self, record: I) -> Result<(), ScanError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let values: Vec<T> = record.into_iter().collect();
        self.write_nullable(values.iter().map(|v| Some(v.as_ref())))
    }

    /// Append one record whose `None` fields are NULL (as opposed to `Some("")`, an
    /// empty string).
    pub fn write_nullable<'a, I>(&mut self, record: I) -> Result<(), ScanError>
    where
        I: IntoIterator<Item = Option<&'a [u8]>>,
    {
        self.put(record)?;
        self.file.add_rows(1);
        Ok(())
    }

    /// Records written so far (not counting the header).
    pub fn rows(&self) -> u64 {
        self.file.rows()
    }

    /// Flush, fsync and describe the file for the manifest.
    pub fn finish(self) -> Result<DataFile, ScanError> {
        self.file.finish()
    }
}

/// A data file whose bytes come ready-made (the output of `COPY … TO STDOUT (FORMAT
/// csv, HEADER true)`, or [`CsvFile`]'s records), hashed and counted as they are
/// written.
pub struct RawFile {
    path: PathBuf,
    name: String,
    columns: Vec<String>,
    writer: HashingWriter<BufWriter<File>>,
    rows: u64,
}

impl RawFile {
    /// Create `dir/name` (it must not exist yet) with `mode`. `columns` describe the
    /// header the bytes will carry; the caller writes that header itself.
    pub fn create(
        dir: &Path,
        name: &str,
        columns: Vec<String>,
        mode: ResultsMode,
    ) -> Result<Self, ScanError> {
        let path = dir.join(name);
        let file = mode.create_new(&path).map_err(ScanError::io(&path))?;
        Ok(RawFile {
            path,
            name: name.to_string(),
            columns,
            writer: HashingWriter::new(BufWriter::with_capacity(1 << 20, file)),
            rows: 0,
        })
    }

    /// Append bytes.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), ScanError> {
        self.writer
            .write_all(bytes)
            .map_err(ScanError::io(&self.path))
    }

    /// Write the CSV header line of `columns`, quoted as PostgreSQL's `COPY … (FORMAT
    /// csv, HEADER true)` quotes it, if nothing has been written yet: a COPY cut short
    /// before its first message still leaves a file with its header.
    pub fn ensure_header(&mut self) -> Result<(), ScanError> {
        if self.bytes() > 0 {
            return Ok(());
        }
        let line = self
            .columns
            .iter()
            .map(|c| {
                if c.contains([',', '"', '\n', '\r']) || c == "\\." {
                    format!("\"{}\"", c.replace('"', "\"\""))
                } else {
                    c.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        self.write_all(format!("{line}\n").as_bytes())
    }

    /// Count `n` more data rows (the caller knows where rows end; the header is not one).
    pub fn add_rows(&mut self, n: u64) {
        self.rows += n;
    }

    /// Data rows counted so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.writer.bytes
    }

    /// Flush, fsync and describe the file for the manifest.
    pub fn finish(self) -> Result<DataFile, ScanError> {
        let HashingWriter {
            inner,
            hasher,
            bytes,
        } = self.writer;
        let file = inner.into_inner().map_err(|e| ScanError::Io {
            path: self.path.clone(),
            cause: e.into_error(),
        })?;
        file.sync_all().map_err(ScanError::io(&self.path))?;
        Ok(DataFile {
            name: self.name,
            columns: self.columns,
            rows: self.rows,
            size: bytes,
            md5: hex::encode(hasher.finalize()),
            snapshot_lsn: None,
        })
    }
}

/// MD5 (hex) and size of a file, read in large sequential chunks.
pub fn file_md5(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_md5_matches_the_bytes_on_disk() {
        let dir = std::env::temp_dir().join(format!("pgmaint-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("t.csv"));
        let mut f = CsvFile::create(&dir, "t.csv", &["a", "b"], ResultsMode::PRIVATE).unwrap();
        f.write(["1", "x,y"]).unwrap();
        f.write(["2", "quote\"d"]).unwrap();
        let df = f.finish().unwrap();
        let (md5, size) = file_md5(&dir.join("t.csv")).unwrap();
        assert_eq!((df.md5, df.size, df.rows), (md5, size, 2));
        assert!(
            CsvFile::create(&dir, "t.csv", &["a"], ResultsMode::PRIVATE).is_err(),
            "never overwrites"
        );
        let _ = std::fs::remove_file(dir.join("r.csv"));
        let mut r = RawFile::create(&dir, "r.csv", vec!["a".into()], ResultsMode::PRIVATE).unwrap();
        r.write_all(b"a\n1\n").unwrap();
        r.add_rows(1);
        let df = r.finish().unwrap();
        let (md5, size) = file_md5(&dir.join("r.csv")).unwrap();
        assert_eq!((df.md5, df.size, df.rows), (md5, size, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn null_is_an_unquoted_empty_field_and_every_value_is_quoted() {
        let mut line = Vec::new();
        encode_record(
            &mut line,
            [
                None,
                Some(&b""[..]),
                Some(&b"a"[..]),
                Some(&b"say \"hi\",\nbye"[..]),
                Some(&b"12"[..]),
                None,
            ],
        );
        assert_eq!(line, b",\"\",\"a\",\"say \"\"hi\"\",\nbye\",\"12\",\n");
    }
}
