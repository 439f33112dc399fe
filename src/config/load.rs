//! Reading config files from disk: one file, or every YAML file of a directory.
//!
//! Directories are read the way Kubernetes mounts a ConfigMap: the visible `*.yaml` entries are
//! symlinks into a hidden `..2024_..` directory that `..data` points at, and an update swaps that
//! link. So symlinks are followed, and names starting with `.` are skipped (otherwise each file
//! would be seen twice, or the hidden directory's stale copies read).

use super::error::{ConfigError, ConfigErrors};
use super::RateLimitConfig;
use std::fs;
use std::path::Path;

/// Loads `path` (a YAML file, or a directory of them) and returns the config with the
/// `(file name, contents)` pairs it was built from, file names being full paths sorted by name.
pub fn load_path(path: &Path) -> Result<(RateLimitConfig, Vec<(String, String)>), ConfigErrors> {
    let files = read_path(path)?;
    let config = RateLimitConfig::from_files(&files)?;
    Ok((config, files))
}

/// Reads the files `load_path` would load, without parsing them: hot reload compares contents
/// first, so an unchanged config is neither parsed again nor reported again.
pub fn read_path(path: &Path) -> Result<Vec<(String, String)>, ConfigErrors> {
    read_path_within(path, usize::MAX)
}

/// Like `read_path`, refusing files that together exceed `max_bytes` before reading them
/// whole: a 50 MB config takes seconds and gigabytes to load, so it is refused up front.
pub fn read_path_within(
    path: &Path,
    max_bytes: usize,
) -> Result<Vec<(String, String)>, ConfigErrors> {
    let mut budget = Budget {
        left: max_bytes,
        max: max_bytes,
    };
    let shown = path.display().to_string();
    let fail = |err: std::io::Error| {
        ConfigErrors(vec![ConfigError::new(
            &shown,
            format!("cannot read config: {err}"),
        )])
    };
    // `metadata` follows symlinks, so a link to a directory is read as that directory.
    if !fs::metadata(path).map_err(fail)?.is_dir() {
        let contents = budget
            .read(path)
            .map_err(|e| ConfigErrors(vec![e.at(&shown)]))?;
        return Ok(vec![(shown, contents)]);
    }

    let mut paths = Vec::new();
    for entry in fs::read_dir(path).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let file = entry.path();
        match fs::metadata(&file) {
            // A directory named `x.yaml` is not a config file.
            Ok(meta) if !meta.is_file() => {}
            // A dangling symlink (say, mid-swap) is kept: reading it reports the problem.
            _ => paths.push(file),
        }
    }
    paths.sort();

    let mut files = Vec::new();
    let mut errors = Vec::new();
    for file in paths {
        let shown = file.display().to_string();
        match budget.read(&file) {
            Ok(contents) => files.push((shown, contents)),
            Err(err) => errors.push(err.at(&shown)),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The bytes the files read so far may still take.
struct Budget {
    left: usize,
    max: usize,
}

enum ReadError {
    Io(std::io::Error),
    TooLarge { max: usize },
}

impl ReadError {
    fn at(self, file: &str) -> ConfigError {
        match self {
            ReadError::Io(err) => ConfigError::new(file, format!("cannot read config: {err}")),
            ReadError::TooLarge { max } => ConfigError::new(
                file,
                format!(
                    "config too large: the files together exceed {max} bytes \
                     (--max-config-bytes)"
                ),
            ),
        }
    }
}

impl Budget {
    /// Read one file, at most `left + 1` bytes of it, so a huge file is never read whole.
    fn read(&mut self, file: &Path) -> Result<String, ReadError> {
        use std::io::Read as _;
        let f = fs::File::open(file).map_err(ReadError::Io)?;
        let mut bytes = Vec::new();
        f.take(self.left.saturating_add(1) as u64)
            .read_to_end(&mut bytes)
            .map_err(ReadError::Io)?;
        if bytes.len() > self.left {
            return Err(ReadError::TooLarge { max: self.max });
        }
        self.left -= bytes.len();
        String::from_utf8(bytes)
            .map_err(|e| ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }
}
