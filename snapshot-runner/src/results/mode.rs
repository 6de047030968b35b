//! Who may read results: the permission bits of result files and of the directories
//! pgmaint creates for them (`results.mode`). Exports and dumps hold table contents,
//! so the default is private to pgmaint's user: files 0600, directories 0700.
//!
//! Files and directories are created with their mode (never a moment with wider
//! bits), then set to it exactly: the process umask does not narrow what the config
//! asks for. Only what pgmaint creates is ever chmod'ed.

use std::fs::{DirBuilder, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The permission bits of result files; directories get the matching execute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultsMode(u32);

impl Default for ResultsMode {
    fn default() -> Self {
        ResultsMode::PRIVATE
    }
}

impl ResultsMode {
    /// Files 0600, directories 0700: the default.
    pub const PRIVATE: ResultsMode = ResultsMode(0o600);
    /// Files 0640, directories 0750: the owner's group may read results too.
    pub const GROUP_READ: ResultsMode = ResultsMode(0o640);
    /// The modes a config may ask for. Never a world bit (results hold table
    /// contents), never group write (a group member could alter results before the
    /// uploader applies them on the primary).
    pub const ALLOWED: [ResultsMode; 2] = [ResultsMode::PRIVATE, ResultsMode::GROUP_READ];

    /// `bits` if it is one of [`ResultsMode::ALLOWED`].
    pub fn from_bits(bits: u32) -> Option<ResultsMode> {
        Self::ALLOWED.into_iter().find(|m| m.0 == bits)
    }

    /// The mode of files, e.g. 0o600.
    pub fn file(self) -> u32 {
        self.0
    }

    /// The mode of directories: the file mode with an execute bit wherever it has a
    /// read bit (0600 → 0700, 0640 → 0750).
    pub fn dir(self) -> u32 {
        self.0 | ((self.0 & 0o444) >> 2)
    }

    /// The umask under which a child process (pg_dump) creates files of this mode
    /// (from 0666): 0600 → 0177, 0640 → 0137.
    pub fn umask(self) -> u32 {
        0o777 & !self.0
    }

    /// Create the file `path`, which must not exist yet, open for writing.
    pub fn create_new(self, path: &Path) -> io::Result<File> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(self.0)
            .open(path)?;
        file.set_permissions(Permissions::from_mode(self.0))?;
        Ok(file)
    }

    /// Write `bytes` to `path` (created, or replaced in place), fsynced.
    pub fn write(self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(self.0)
            .open(path)?;
        file.set_permissions(Permissions::from_mode(self.0))?;
        file.write_all(bytes)?;
        file.sync_all()
    }

    /// Create the directory `path` (its parent must exist; it must not).
    pub fn create_dir(self, path: &Path) -> io::Result<()> {
        DirBuilder::new().mode(self.dir()).create(path)?;
        std::fs::set_permissions(path, Permissions::from_mode(self.dir()))
    }

    /// Create `path` and any missing parents with the directory mode (narrowed by the
    /// umask); an existing directory is left as it is.
    pub fn create_dir_all(self, path: &Path) -> io::Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        DirBuilder::new()
            .recursive(true)
            .mode(self.dir())
            .create(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_get_the_mode_whatever_the_umask() {
        assert_eq!(
            (ResultsMode::PRIVATE.dir(), ResultsMode::GROUP_READ.dir()),
            (0o700, 0o750)
        );
        assert_eq!(
            (
                ResultsMode::PRIVATE.umask(),
                ResultsMode::GROUP_READ.umask()
            ),
            (0o177, 0o137)
        );
        assert_eq!(ResultsMode::from_bits(0o644), None);
        let base = std::env::temp_dir().join(format!("pgmaint-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for m in ResultsMode::ALLOWED {
            let dir = base.join(format!("{:o}", m.file()));
            m.create_dir(&dir).unwrap();
            m.create_new(&dir.join("a")).unwrap();
            m.write(&dir.join("b"), b"x").unwrap();
            assert_eq!(
                (mode(&dir), mode(&dir.join("a")), mode(&dir.join("b"))),
                (m.dir(), m.file(), m.file())
            );
            assert!(m.create_new(&dir.join("a")).is_err(), "never overwrites");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
