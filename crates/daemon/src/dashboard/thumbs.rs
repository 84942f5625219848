//! Thumbnails of the photos the dashboard lists as waiting or failed, so a person recognises
//! them at a glance. A thumbnail is asked for by resource id and the file is found in the
//! index, never by a path from the request. JPEG and PNG are decoded here with `image` under
//! bounded dimensions and allocation (a hostile file cannot exhaust the daemon's memory);
//! HEIC/HEIF goes through Debian's `heif-thumbnailer` as a child process with a timeout, which
//! keeps a C decoder out of the daemon. Anything else (a video, a file gone or undecodable, no
//! tool) gets a fixed placeholder. Made thumbnails are cached by content hash under
//! `<state>/dashboard/thumbs/`, bounded in files and bytes.

use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ferry_core::resource::ResourceType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

/// The long side of a thumbnail, at most.
pub const MAX_SIDE: u32 = 256;
/// The widest or tallest picture decoded; beyond it the placeholder is shown.
const MAX_DIMENSION: u32 = 12_000;
/// What one decode may allocate (a 12-megapixel RGB photo needs 36 MB; 48 megapixels, 145 MB).
const MAX_ALLOC: u64 = 192 * 1024 * 1024;
/// The largest file decoded here (phone photos are under 20 MB, screenshots under 30 MB).
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// How long `heif-thumbnailer` may take (it takes ~20 ms on a phone photo) before it is killed.
pub const HEIF_TIMEOUT: Duration = Duration::from_secs(10);
/// The cache keeps at most this many thumbnails...
const CACHE_FILES: usize = 2_000;
/// ...and this many bytes (a thumbnail is ~10 KB); the least recently served go first.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// JPEG quality of a made thumbnail: small files, no visible blocks at 256 px.
const QUALITY: u8 = 80;
/// The tool run for HEIC/HEIF (Debian's `heif-thumbnailer`, from PATH).
pub const HEIF_TOOL: &str = "heif-thumbnailer";

/// Shown where no thumbnail can be made: a picture frame in neutral grey, fixed size.
pub const PLACEHOLDER_SVG: &str = concat!(
    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"256\" height=\"192\" viewBox=\"0 0 256 192\">",
    "<rect width=\"256\" height=\"192\" rx=\"12\" fill=\"#d5dae1\"/>",
    "<path d=\"M56 144l44-56 32 38 22-26 46 44z\" fill=\"#8d97a5\"/>",
    "<circle cx=\"176\" cy=\"64\" r=\"16\" fill=\"#8d97a5\"/></svg>"
);

/// Why no thumbnail was made (the placeholder is shown instead; logged at debug level).
#[derive(Debug, thiserror::Error)]
pub enum ThumbError {
    #[error("not a photo ({0})")]
    NotAPhoto(String),
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot decode the picture: {0}")]
    Decode(#[from] image::ImageError),
    #[error("the file is too large to decode ({0} bytes)")]
    TooLarge(u64),
    #[error("the picture would need {0} bytes to decode")]
    TooManyPixels(u64),
    #[error("not a JPEG, PNG or HEIC/HEIF file")]
    UnknownFormat,
    #[error("{HEIF_TOOL} is not installed")]
    NoTool,
    #[error("{HEIF_TOOL} took longer than {0:?} and was stopped")]
    Timeout(Duration),
    #[error("{HEIF_TOOL} failed: {0}")]
    Tool(String),
}

/// A thumbnail's bytes and type, or the placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Thumb {
    Jpeg(Vec<u8>),
    Placeholder,
}

/// What a file is, from its first bytes (never from its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Heif,
    Other,
}

/// Sniffs the format from a file's first 12 bytes.
pub fn sniff(head: &[u8]) -> Format {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Format::Jpeg
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Format::Png
    } else if head.len() >= 12
        && &head[4..8] == b"ftyp"
        && matches!(
            &head[8..12],
            b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"mif1" | b"msf1"
        )
    {
        Format::Heif
    } else {
        Format::Other
    }
}

/// Whether a resource of this type may be a still picture worth a thumbnail.
pub fn is_picture(t: &ResourceType) -> bool {
    matches!(
        t,
        ResourceType::Photo
            | ResourceType::AlternatePhoto
            | ResourceType::FullSizePhoto
            | ResourceType::AdjustmentBasePhoto
    )
}

fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_DIMENSION);
    l.max_image_height = Some(MAX_DIMENSION);
    l.max_alloc = Some(MAX_ALLOC);
    l
}

/// Decodes a JPEG or PNG under [`limits`], turned as its EXIF orientation says, and makes a
/// JPEG of at most [`MAX_SIDE`] on its long side (never enlarged). Blocking: call it from a
/// blocking thread.
pub fn thumbnail_of<R: Read + Seek>(reader: R) -> Result<Vec<u8>, ThumbError> {
    let mut reader = ImageReader::new(BufReader::new(reader)).with_guessed_format()?;
    if !matches!(
        reader.format(),
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png)
    ) {
        return Err(ThumbError::UnknownFormat);
    }
    reader.limits(limits());
    let mut decoder = reader.into_decoder()?;
    let orientation = decoder.orientation()?;
    // The decoders check only the dimensions against the limits, and `from_decoder` allocates
    // the whole picture unchecked: the allocation is bounded here, twice over for a picture
    // that is turned (a second full-size copy).
    let copies = if orientation == image::metadata::Orientation::NoTransforms {
        1
    } else {
        2
    };
    let needed = decoder.total_bytes().saturating_mul(copies);
    if needed > MAX_ALLOC {
        return Err(ThumbError::TooManyPixels(needed));
    }
    let mut img = DynamicImage::from_decoder(decoder)?;
    img.apply_orientation(orientation);
    if img.width() > MAX_SIDE || img.height() > MAX_SIDE {
        img = img.thumbnail(MAX_SIDE, MAX_SIDE);
    }
    let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
    let mut out = Vec::new();
    rgb.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
        &mut out, QUALITY,
    ))?;
    Ok(out)
}

/// A temporary file name in `dir` no other request uses.
fn temp_name(dir: &Path, suffix: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        ".tmp-{}-{}{suffix}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs `TOOL -s 256 IN OUT.png` (Debian's `heif-thumbnailer`), killed after `timeout`, and
/// returns its PNG made into our JPEG thumbnail.
async fn heif_thumbnail(
    tool: &Path,
    timeout: Duration,
    path: &Path,
    dir: &Path,
) -> Result<Vec<u8>, ThumbError> {
    // The index holds absolute paths; anything else could read as an option to the tool.
    if !path.is_absolute() {
        return Err(ThumbError::Tool("the path is not absolute".into()));
    }
    let out = temp_name(dir, ".png");
    let child = tokio::process::Command::new(tool)
        .arg("-s")
        .arg(MAX_SIDE.to_string())
        .arg(path)
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ThumbError::NoTool),
        Err(e) => return Err(e.into()),
    };
    // On timeout the future is dropped with the child, which kills it (`kill_on_drop`).
    let result = tokio::time::timeout(timeout, child.wait_with_output()).await;
    let made = match result {
        Err(_) => Err(ThumbError::Timeout(timeout)),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(o)) if !o.status.success() => Err(ThumbError::Tool(o.status.to_string())),
        Ok(Ok(_)) => {
            let png = out.clone();
            tokio::task::spawn_blocking(move || thumbnail_of(std::fs::File::open(&png)?))
                .await
                .map_err(|e| ThumbError::Tool(e.to_string()))?
        }
    };
    let _ = tokio::fs::remove_file(&out).await;
    made
}

/// The thumbnail cache and the limit on decodes at once.
#[derive(Debug)]
pub struct Thumbs {
    dir: PathBuf,
    /// Decodes at once: one per core at most, and at most two, so a page of thumbnails does
    /// not take over a small machine's daemon.
    decodes: std::sync::Arc<tokio::sync::Semaphore>,
    /// `heif-thumbnailer` from PATH and [`HEIF_TIMEOUT`]; another tool in tests.
    heif_tool: PathBuf,
    heif_timeout: Duration,
}

/// What the index says of a resource, as a thumbnail needs it.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub blake3: [u8; 32],
    pub resource_type: ResourceType,
}

impl Thumbs {
    pub fn new(state_dir: &Path) -> Thumbs {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Thumbs {
            dir: state_dir.join("dashboard").join("thumbs"),
            decodes: std::sync::Arc::new(tokio::sync::Semaphore::new(cores.clamp(1, 2))),
            heif_tool: PathBuf::from(HEIF_TOOL),
            heif_timeout: HEIF_TIMEOUT,
        }
    }

    /// The same with another HEIC tool and timeout (tests: a tool that hangs, none at all).
    pub fn with_heif_tool(mut self, tool: PathBuf, timeout: Duration) -> Thumbs {
        self.heif_tool = tool;
        self.heif_timeout = timeout;
        self
    }

    /// Where the thumbnail of content `blake3` is cached.
    pub fn cache_path(&self, blake3: &[u8; 32]) -> PathBuf {
        self.dir
            .join(format!("{}.jpg", ferry_store::library::hex(blake3)))
    }

    /// The thumbnail of `src`: from the cache, else made (and cached), else the placeholder.
    pub async fn get(&self, src: Source) -> Thumb {
        let cached = self.cache_path(&src.blake3);
        if let Ok(bytes) = tokio::fs::read(&cached).await {
            // Served now: the last to be pruned.
            let _ = std::fs::File::options()
                .append(true)
                .open(&cached)
                .and_then(|f| f.set_modified(SystemTime::now()));
            return Thumb::Jpeg(bytes);
        }
        // Owned, and handed to the blocking decode: a request the browser gave up on keeps
        // its permit until its decode really ends, so no more than the limit ever run.
        let Ok(permit) = self.decodes.clone().acquire_owned().await else {
            return Thumb::Placeholder;
        };
        match self.make(&src, permit).await {
            Ok(bytes) => {
                let dir = self.dir.clone();
                let to_cache = bytes.clone();
                let stored =
                    tokio::task::spawn_blocking(move || store(&dir, &cached, &to_cache)).await;
                if let Ok(Err(e)) = stored {
                    tracing::debug!(error = %e, "thumbnail not cached");
                }
                Thumb::Jpeg(bytes)
            }
            Err(e) => {
                tracing::debug!(path = %src.path.display(), error = %e, "no thumbnail");
                Thumb::Placeholder
            }
        }
    }

    async fn make(
        &self,
        src: &Source,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Vec<u8>, ThumbError> {
        if !is_picture(&src.resource_type) {
            return Err(ThumbError::NotAPhoto(format!("{:?}", src.resource_type)));
        }
        let path = src.path.clone();
        let opened = tokio::task::spawn_blocking(move || -> Result<_, ThumbError> {
            // Checked before opening: opening a FIFO put where a photo was would block.
            if !std::fs::metadata(&path)?.is_file() {
                return Err(ThumbError::NotAPhoto("not a regular file".into()));
            }
            let mut f = std::fs::File::open(&path)?;
            let meta = f.metadata()?;
            if !meta.is_file() {
                return Err(ThumbError::NotAPhoto("not a regular file".into()));
            }
            // The JPEG decoder reads the whole file into memory first: a file far larger than
            // any photo is refused unread.
            if meta.len() > MAX_FILE_BYTES {
                return Err(ThumbError::TooLarge(meta.len()));
            }
            let mut head = [0u8; 12];
            let n = read_up_to(&mut f, &mut head)?;
            let format = sniff(&head[..n]);
            if matches!(format, Format::Jpeg | Format::Png) {
                f.rewind()?;
                let made = thumbnail_of(f);
                drop(permit);
                // The decode freed up to MAX_ALLOC: give it back rather than keep it resident.
                crate::release_free_memory();
                return made.map(Ok);
            }
            if format == Format::Heif {
                // The tool runs under the same permit.
                return Ok(Err(permit));
            }
            Err(ThumbError::UnknownFormat)
        })
        .await
        // A decoder that panicked on a hostile file: a placeholder, the daemon goes on.
        .map_err(|e| ThumbError::Tool(e.to_string()))??;
        match opened {
            Ok(bytes) => Ok(bytes),
            Err(_permit) => {
                tokio::fs::create_dir_all(&self.dir).await?;
                heif_thumbnail(&self.heif_tool, self.heif_timeout, &src.path, &self.dir).await
            }
        }
    }
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes `bytes` to `path` (temp file, then rename: a reader never sees half a thumbnail),
/// then prunes the cache to its bounds.
fn store(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = temp_name(dir, ".jpg");
    std::fs::write(&tmp, bytes)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    prune(dir, CACHE_FILES, CACHE_BYTES)
}

/// Deletes the least recently served files of `dir` until at most `max_files` files of at most
/// `max_bytes` in all are left.
pub fn prune(dir: &Path, max_files: usize, max_bytes: u64) -> std::io::Result<()> {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file().then(|| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    e.path(),
                )
            })
        })
        .collect();
    let mut bytes: u64 = files.iter().map(|f| f.1).sum();
    if files.len() <= max_files && bytes <= max_bytes {
        return Ok(());
    }
    files.sort_by_key(|f| f.0);
    let mut left = files.len();
    for (_, len, path) in files {
        if left <= max_files && bytes <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            left -= 1;
            bytes = bytes.saturating_sub(len);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([200, 40, 40])));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn dimensions(jpeg: &[u8]) -> (u32, u32) {
        let img = image::load_from_memory(jpeg).unwrap();
        (img.width(), img.height())
    }

    #[test]
    fn a_thumbnail_is_at_most_256_on_its_long_side_and_never_enlarged() {
        assert_eq!(
            dimensions(&thumbnail_of(std::io::Cursor::new(jpeg(1000, 500))).unwrap()),
            (256, 128)
        );
        assert_eq!(
            dimensions(&thumbnail_of(std::io::Cursor::new(jpeg(64, 48))).unwrap()),
            (64, 48)
        );
    }

    #[test]
    fn formats_are_sniffed_from_bytes_and_garbage_is_refused() {
        assert_eq!(sniff(&jpeg(4, 4)[..12]), Format::Jpeg);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\r"), Format::Png);
        assert_eq!(sniff(b"\0\0\0\x18ftypheic"), Format::Heif);
        assert_eq!(
            sniff(b"\0\0\0\x18ftypqt  "),
            Format::Other,
            "a QuickTime movie"
        );
        assert_eq!(sniff(b""), Format::Other);
        let mut truncated = jpeg(300, 300);
        truncated.truncate(200);
        assert!(thumbnail_of(std::io::Cursor::new(truncated)).is_err());
        assert!(thumbnail_of(std::io::Cursor::new(b"not a picture".to_vec())).is_err());
    }

    #[test]
    fn a_picture_larger_than_the_limits_is_refused_before_it_is_decoded() {
        // A PNG header that claims 60,000 × 60,000 pixels (10 GB of RGB): refused from the
        // header alone, so nothing near that is allocated.
        let err = thumbnail_of(std::io::Cursor::new(png_header(60_000, 8))).unwrap_err();
        assert!(matches!(err, ThumbError::Decode(_)), "{err}");
    }

    /// Within the dimensions, but more pixels than one decode may hold: refused from the
    /// header, before anything is allocated (the decoders check only width and height, so
    /// without the check this 12000×12000 16-bit picture takes over 800 MB to decode).
    #[test]
    fn a_picture_within_the_dimensions_but_too_many_bytes_is_refused_unread() {
        // 16 bits per sample, RGB.
        let err = thumbnail_of(std::io::Cursor::new(png_header(12_000, 16))).unwrap_err();
        assert!(
            matches!(err, ThumbError::TooManyPixels(n) if n == 12_000 * 12_000 * 6),
            "{err}"
        );
    }

    /// A PNG of `side` × `side` RGB pixels of `bits` per sample with no pixel data: a
    /// signature, its header, an empty image data chunk (the decoder reads up to the first),
    /// the end.
    fn png_header(side: u32, bits: u8) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&side.to_be_bytes());
        ihdr.extend_from_slice(&side.to_be_bytes());
        ihdr.extend_from_slice(&[bits, 2, 0, 0, 0]);
        for chunk in [&ihdr[..], b"IDAT", b"IEND"] {
            png.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
            png.extend_from_slice(chunk);
            png.extend_from_slice(&crc32(chunk).to_be_bytes());
        }
        png
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn the_cache_keeps_the_most_recently_served_within_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(100);
        for i in 0..5u64 {
            let p = dir.path().join(format!("{i}.jpg"));
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            std::fs::File::options()
                .append(true)
                .open(&p)
                .unwrap()
                .set_modified(t0 + Duration::from_secs(i))
                .unwrap();
        }
        prune(dir.path(), 3, 10_000).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["2.jpg", "3.jpg", "4.jpg"], "the oldest went first");
        prune(dir.path(), 10, 150).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "bytes");
    }

    /// A HEIC tool that hangs is killed at the timeout and the placeholder shown; a missing
    /// tool gives the placeholder too. The "tool" is a script that writes its pid and sleeps.
    #[tokio::test]
    async fn a_hanging_heic_tool_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let heic = dir.path().join("a.heic");
        std::fs::write(&heic, b"\0\0\0\x18ftypheic\0\0\0\0mif1heic").unwrap();
        let pid_file = dir.path().join("pid");
        let tool = dir.path().join("hang.sh");
        std::fs::write(
            &tool,
            format!(
                "#!/bin/sh\necho $$ > {}.tmp && mv {}.tmp {}\nexec sleep 120\n",
                pid_file.display(),
                pid_file.display(),
                pid_file.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let src = Source {
            path: heic.clone(),
            blake3: [9; 32],
            resource_type: ResourceType::Photo,
        };
        let state = tempfile::tempdir().unwrap();
        let thumbs = Thumbs::new(state.path()).with_heif_tool(tool, Duration::from_millis(500));
        let started = std::time::Instant::now();
        assert_eq!(thumbs.get(src.clone()).await, Thumb::Placeholder);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "it did not wait for the tool"
        );
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
        // Killed on drop, then reaped by tokio: gone (or a zombie) shortly after.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let state = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
            let zombie_or_gone = state.is_empty()
                || state
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            if zombie_or_gone {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the tool still runs: {state}"
            );
            tokio::task::yield_now().await;
        }
        let none = Thumbs::new(state.path())
            .with_heif_tool(dir.path().join("no-such-tool"), Duration::from_secs(5));
        assert_eq!(none.get(src).await, Thumb::Placeholder);
    }

    #[tokio::test]
    async fn a_video_a_missing_file_and_garbage_get_the_placeholder() {
        let state = tempfile::tempdir().unwrap();
        let thumbs = Thumbs::new(state.path());
        let lib = tempfile::tempdir().unwrap();
        let garbage = lib.path().join("garbage.jpg");
        std::fs::write(&garbage, b"\xFF\xD8\xFFnot really a jpeg at all").unwrap();
        let good = lib.path().join("good.jpg");
        std::fs::write(&good, jpeg(600, 800)).unwrap();
        // A good JPEG's bytes, then a hole to 100 MB: too large to be read into memory.
        let huge = lib.path().join("huge.jpg");
        std::fs::write(&huge, jpeg(600, 800)).unwrap();
        std::fs::File::options()
            .append(true)
            .open(&huge)
            .unwrap()
            .set_len(100 * 1024 * 1024)
            .unwrap();
        let src = |path: &Path, t: ResourceType, n: u8| Source {
            path: path.to_owned(),
            blake3: [n; 32],
            resource_type: t,
        };
        assert_eq!(
            thumbs.get(src(&good, ResourceType::Video, 1)).await,
            Thumb::Placeholder
        );
        assert_eq!(
            thumbs
                .get(src(&lib.path().join("gone.jpg"), ResourceType::Photo, 2))
                .await,
            Thumb::Placeholder
        );
        assert_eq!(
            thumbs.get(src(&garbage, ResourceType::Photo, 3)).await,
            Thumb::Placeholder
        );
        assert_eq!(
            thumbs.get(src(&huge, ResourceType::Photo, 5)).await,
            Thumb::Placeholder
        );
        let Thumb::Jpeg(made) = thumbs.get(src(&good, ResourceType::Photo, 4)).await else {
            panic!("no thumbnail of a good JPEG");
        };
        assert_eq!(dimensions(&made), (192, 256));
        assert_eq!(
            std::fs::read(thumbs.cache_path(&[4; 32])).unwrap(),
            made,
            "cached by content hash"
        );
        assert!(
            !thumbs.cache_path(&[3; 32]).exists(),
            "placeholders are not cached"
        );
    }
}
