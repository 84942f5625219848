#!/usr/bin/env python3
"""Regenerate Ferry's test photo library and its oracles.

Writes, from scratch (the library folder is deleted and recreated):

  crates/library/tests/fixtures/library/     small media files, one folder per grouping case
  crates/library/tests/fixtures/expected.json the grouping the library is meant to produce
  crates/library/tests/fixtures/exiftool.json exiftool's reading of every generated file

exiftool.json is `exiftool -j -n -G1 -a -api largefilesupport=1` over every file
(named explicitly, so non-media files are read too), run from the library root so
that SourceFile is relative to it; the filesystem-dependent `System:*` tags and
`ExifTool:ExifToolVersion` are dropped, and entries are sorted by SourceFile.

expected.json:
  {"assets": [{"name": ..., "resources": [{"path": ..., "type": ...}, ...]}, ...],
   "skipped": [{"path": ..., "reason": "not_media" | "empty"}, ...]}
Resource types: photo video audio alternate_photo full_size_photo full_size_video
adjustment_data paired_video full_size_paired_video sidecar. Assets are sorted by
name; the first resource of an asset is its primary one.

Output is deterministic (fixed timestamps, UUIDs and seeds; ffmpeg in bitexact
mode, single-threaded): two runs give byte-identical files.

Needs: Python with Pillow and pillow-heif (e.g. /work/.peers-venv/bin/python),
exiftool (12.57 was used) and ffmpeg (5.1 with libx264 and the native aac encoder)
on PATH.

Usage: scripts/make-fixtures.py [--out DIR] [--no-exiftool]
"""

import argparse
import json
import os
import plistlib
import random
import shutil
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageDraw
from PIL.TiffImagePlugin import IFDRational
import pillow_heif

pillow_heif.register_heif_opener()

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "crates" / "library" / "tests" / "fixtures"

# Every file's mtime (not part of any oracle, but keeps `ls -l` stable).
FIXED_MTIME = 1719792000  # 2024-07-01T00:00:00Z

# Fixed Apple content identifiers (upper-case, as iOS writes them).
CID_0200 = "A1B2C3D4-0001-4E5F-8A9B-000000000200"
CID_0201 = "A1B2C3D4-0001-4E5F-8A9B-000000000201"
CID_0310_PHOTO = "A1B2C3D4-0001-4E5F-8A9B-00000000031A"
CID_0310_VIDEO = "A1B2C3D4-0001-4E5F-8A9B-00000000031B"
CID_0500 = "A1B2C3D4-0001-4E5F-8A9B-000000000500"

# ---------------------------------------------------------------------------
# EXIF helpers


def apple_makernote(content_id=None):
    """Apple iOS MakerNote (EXIF 0x927C) with tag 0x0001 = 14 and, if given,
    tag 0x0011 = content identifier (exiftool calls it Apple:MediaGroupUUID).
    Big-endian IFD; offsets are relative to the start of the MakerNote."""
    header = b"Apple iOS\x00" + b"\x00\x01" + b"MM"
    entries = [(0x0001, 9, 1, struct.pack(">i", 14))]
    if content_id is not None:
        entries.append((0x0011, 2, len(content_id) + 1, content_id.encode("ascii") + b"\x00"))
    n = len(entries)
    data_off = len(header) + 2 + 12 * n + 4
    ifd = struct.pack(">H", n)
    data = b""
    for tag, typ, count, value in entries:
        if len(value) <= 4:
            ifd += struct.pack(">HHI", tag, typ, count) + value.ljust(4, b"\x00")
        else:
            ifd += struct.pack(">HHII", tag, typ, count, data_off + len(data))
            data += value
            if len(data) % 2:
                data += b"\x00"
    ifd += struct.pack(">I", 0)
    return header + ifd + data


def _dms(value):
    """Decimal degrees (absolute) -> EXIF (deg, min, sec) rationals."""
    v = Fraction(abs(value)).limit_denominator(10**7)
    deg = int(v)
    rem = (v - deg) * 60
    mins = int(rem)
    secs = (rem - mins) * 60
    return (
        IFDRational(deg, 1),
        IFDRational(mins, 1),
        IFDRational(round(secs * 10000), 10000),
    )


def make_exif(
    *,
    make=None,
    model=None,
    dto=None,
    offset=None,
    subsec=None,
    gps=None,
    size=None,
    makernote=None,
    software=None,
    lens=None,
):
    """Build an EXIF blob. dto is 'YYYY:MM:DD HH:MM:SS', gps is (lat, lon, alt)."""
    ex = Image.Exif()
    if make:
        ex[0x010F] = make
    if model:
        ex[0x0110] = model
    if software:
        ex[0x0131] = software
    if dto:
        ex[0x0132] = dto  # ModifyDate
    exif_ifd = ex.get_ifd(0x8769)
    if dto:
        exif_ifd[0x9003] = dto  # DateTimeOriginal
        exif_ifd[0x9004] = dto  # CreateDate
    if offset:
        exif_ifd[0x9010] = offset  # OffsetTime
        exif_ifd[0x9011] = offset  # OffsetTimeOriginal
        exif_ifd[0x9012] = offset  # OffsetTimeDigitized
    if subsec:
        exif_ifd[0x9291] = subsec  # SubSecTimeOriginal
    if size:
        exif_ifd[0xA002] = size[0]  # ExifImageWidth
        exif_ifd[0xA003] = size[1]  # ExifImageHeight
    if lens:
        exif_ifd[0xA434] = lens
    if makernote is not None:
        exif_ifd[0x927C] = makernote
    if gps:
        lat, lon, alt = gps
        g = ex.get_ifd(0x8825)
        g[0x0001] = "N" if lat >= 0 else "S"
        g[0x0002] = _dms(lat)
        g[0x0003] = "E" if lon >= 0 else "W"
        g[0x0004] = _dms(lon)
        if alt is not None:
            g[0x0005] = b"\x00" if alt >= 0 else b"\x01"
            g[0x0006] = IFDRational(round(abs(alt) * 100), 100)
    return ex.tobytes()


# ---------------------------------------------------------------------------
# Writers


def picture(size, color, mark=0):
    """A tiny deterministic picture: solid color with a couple of shapes."""
    w, h = size
    im = Image.new("RGB", size, color)
    d = ImageDraw.Draw(im)
    d.rectangle([w // 8, h // 8, w // 2, h // 2], fill=(255 - color[0], 255 - color[1], 255 - color[2]))
    d.ellipse([w // 2, h // 3, w - 2 - mark % 8, h - 2], fill=((color[0] + 90) % 256, (color[1] + 40) % 256, (color[2] + 160) % 256))
    return im


def write_jpeg(path, size=(64, 48), color=(180, 120, 60), mark=0, exif=None):
    im = picture(size, color, mark)
    kw = {"quality": 60}
    if exif is not None:
        kw["exif"] = exif
    im.save(path, "JPEG", **kw)


def write_heic(path, size=(64, 64), color=(90, 150, 210), mark=0, exif=None):
    # HEIC sizes are multiples of 64 so that the coded size (ispe) is the real one:
    # x265 pads e.g. 64x48 to 64x64 and adds a clean-aperture box.
    im = picture(size, color, mark)
    kw = {"quality": 50}
    if exif is not None:
        kw["exif"] = exif
    im.save(path, "HEIF", **kw)


def write_tiff_raw(path, size=(64, 48), color=(70, 160, 90), mark=0, exif=None):
    """A TIFF with EXIF, standing in for a camera RAW (.DNG/.NEF)."""
    im = picture(size, color, mark)
    kw = {}  # uncompressed: Pillow's own writer (libtiff rejects the EXIF IFD pointer)
    if exif is not None:
        kw["exif"] = exif
    im.save(path, "TIFF", **kw)


def ffmpeg(args, path):
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"] + args + [str(path)]
    subprocess.run(cmd, check=True)


def write_video(
    path,
    *,
    duration=0.5,
    color="0x3366aa",
    size="32x24",
    creation_time=None,
    apple=None,
    location=None,
    audio=True,
):
    """Tiny H.264 (+AAC) QuickTime/MP4.

    apple: dict of com.apple.quicktime.* keys (written as QuickTime 'mdta' Keys,
    as iPhones do), e.g. {"content.identifier": ..., "creationdate": ...}.
    location: ISO 6709 string; for a plain MP4 it ends up in udta \xa9xyz."""
    args = ["-f", "lavfi", "-i", f"color=c={color}:s={size}:r=10:d={duration}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=f=440:sample_rate=8000:d={duration}"]
        args += ["-map", "0:v", "-map", "1:a", "-c:a", "aac", "-b:a", "16k", "-shortest"]
    args += [
        "-c:v", "libx264", "-preset", "ultrafast", "-threads", "1", "-pix_fmt", "yuv420p",
        "-map_metadata", "-1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
    ]
    if creation_time:
        args += ["-metadata", f"creation_time={creation_time}"]
    if apple:
        args += ["-movflags", "use_metadata_tags"]
        for k, v in apple.items():
            args += ["-metadata", f"com.apple.quicktime.{k}={v}"]
    if location:
        args += ["-metadata", f"location={location}"]
    ffmpeg(args, path)
    if location and not apple and str(path).lower().endswith(".mp4"):
        mp4_loci_to_xyz(path, location)


def _atoms(data, start, end):
    """(type, start, end) of the atoms in data[start:end] (32-bit sizes only)."""
    out = []
    i = start
    while i + 8 <= end:
        size, typ = struct.unpack(">I4s", data[i:i + 8])
        assert size >= 8, "unsupported atom size"
        out.append((typ, i, i + size))
        i += size
    return out


def mp4_loci_to_xyz(path, iso6709):
    """Replace the 3GPP 'loci' atom ffmpeg writes for MP4 with the '\xa9xyz'
    udta atom Android cameras write (ffmpeg only writes \xa9xyz in MOV mode).
    moov must come after mdat (no faststart), so chunk offsets don't move."""
    data = bytearray(Path(path).read_bytes())
    top = _atoms(data, 0, len(data))
    (moov,) = [a for a in top if a[0] == b"moov"]
    assert moov == top[-1], "moov must be last"
    (udta,) = [a for a in _atoms(data, moov[1] + 8, moov[2]) if a[0] == b"udta"]
    (loci,) = [a for a in _atoms(data, udta[1] + 8, udta[2]) if a[0] == b"loci"]
    text = iso6709.encode("ascii")
    body = struct.pack(">HH", len(text), 0x15C7) + text
    xyz = struct.pack(">I", 8 + len(body)) + b"\xa9xyz" + body
    delta = len(xyz) - (loci[2] - loci[1])
    data[loci[1]:loci[2]] = xyz
    for _, start, end in (udta, moov):
        struct.pack_into(">I", data, start, end - start + delta)
    Path(path).write_bytes(bytes(data))


def write_m4a(path, duration=0.5):
    ffmpeg(
        [
            "-f", "lavfi", "-i", f"sine=f=660:sample_rate=8000:d={duration}",
            "-c:a", "aac", "-b:a", "16k", "-map_metadata", "-1",
            "-fflags", "+bitexact", "-flags:a", "+bitexact",
            "-metadata", "creation_time=2024-06-16T07:45:00Z",
            "-metadata", "title=New Recording",
        ],
        path,
    )


def write_wav(path, duration=0.25, rate=8000):
    import math
    import wave

    n = int(duration * rate)
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 523.25 * i / rate))) for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def aae_bytes(timestamp, note):
    """A small Apple adjustments plist, shaped like the ones Photos writes."""
    adjustment = zlib.compress(
        json.dumps(
            {"adjustments": [{"formatVersion": 1, "identifier": note, "enabled": True,
                              "settings": {"inputIntensity": 0.5}}],
             "metadata": {"orientation": 1, "masterWidth": 64, "masterHeight": 48},
             "versionInfo": {"buildNumber": "21F90", "appVersion": "2.0"}},
            sort_keys=True,
        ).encode(),
        9,
    )
    plist = {
        "adjustmentBaseVersion": 0,
        "adjustmentData": adjustment,
        "adjustmentEditorBundleID": "com.apple.mobileslideshow",
        "adjustmentFormatIdentifier": "com.apple.photo",
        "adjustmentFormatVersion": "1.5",
        "adjustmentRenderTypes": 0,
        "adjustmentTimestamp": timestamp,
    }
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=True)


def xmp_sidecar(rating, label, keywords, dto=None):
    subj = "".join(f"     <rdf:li>{k}</rdf:li>\n" for k in keywords)
    date = f'   exif:DateTimeOriginal="{dto}"\n' if dto else ""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        '    xmlns:exif="http://ns.adobe.com/exif/1.0/"\n'
        '    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"\n'
        f'   xmp:Rating="{rating}"\n'
        f'   xmp:Label="{label}"\n'
        f"{date}"
        '   crs:Exposure2012="+0.35"\n'
        '   crs:HasSettings="True">\n'
        "   <dc:subject>\n"
        "    <rdf:Bag>\n"
        f"{subj}"
        "    </rdf:Bag>\n"
        "   </dc:subject>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>\n'
    ).encode("utf-8")


def jpeg_app1_span(data):
    """(start, end) of the first EXIF APP1 segment (marker included)."""
    i = 2
    while i + 4 <= len(data):
        assert data[i] == 0xFF, "bad JPEG marker"
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            return i, i + 2 + length
        if marker == 0xDA:
            break
        i += 2 + length
    raise ValueError("no EXIF APP1")


def corrupt_exif_app1():
    """An APP1 whose TIFF IFD entries point far outside the segment."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    entries = [
        (0x010F, 2, 0xFFFFFFF0, 0xFFFFFF00),  # Make: huge count, offset past end
        (0x0110, 2, 64, 0x7FFFFFFF),          # Model: offset past end
        (0x0132, 2, 20, 0x00001000),          # ModifyDate: offset past end
        (0x8769, 4, 1, 0xFFFFFFF8),           # ExifIFD pointer past end
        (0x8825, 4, 1, 0x00000008),           # GPS IFD pointer loops back to IFD0
    ]
    ifd = struct.pack(">H", 0x0FFF)  # entry count far larger than what follows
    for tag, typ, count, value in entries:
        ifd += struct.pack(">HHII", tag, typ, count, value)
    ifd += struct.pack(">I", 0xFFFFFFF0)  # next IFD offset past end
    payload = b"Exif\x00\x00" + tiff + ifd
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


# ---------------------------------------------------------------------------
# The library


class Builder:
    def __init__(self, root):
        self.root = root
        self.assets = []
        self.skipped = []
        self.files = []

    def path(self, rel):
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(rel)
        return p

    def asset(self, name, *resources):
        self.assets.append(
            {"name": name, "resources": [{"path": p, "type": t} for p, t in resources]}
        )

    def skip(self, rel, reason):
        self.skipped.append({"path": rel, "reason": reason})


def build(b):
    iphone = {"make": "Apple", "model": "iPhone 13 Pro"}
    iphone_mov = {"make": "Apple", "model": "iPhone 13 Pro", "software": "17.5.1"}

    # 1. Plain JPEGs with full EXIF (N/E, S/W, and below sea level).
    p = "plain/IMG_0010.JPG"
    write_jpeg(b.path(p), color=(200, 140, 80), mark=1, exif=make_exif(
        **iphone, dto="2024:06:10 14:32:05", offset="+02:00", subsec="123",
        gps=(48.858370, 2.294481, 35.2), size=(64, 48), software="17.5.1",
        lens="iPhone 13 Pro back triple camera 5.7mm f/1.5",
        makernote=apple_makernote()))
    b.asset("plain/IMG_0010", (p, "photo"))
    p = "plain/IMG_0011.JPG"
    write_jpeg(b.path(p), color=(60, 160, 200), mark=2, exif=make_exif(
        make="Canon", model="Canon EOS R6", dto="2023:12:31 23:59:58", offset="-03:00",
        gps=(-22.951916, -43.210487, 700.0), size=(64, 48)))
    b.asset("plain/IMG_0011", (p, "photo"))
    p = "plain/IMG_0012.JPG"
    write_jpeg(b.path(p), color=(230, 210, 150), mark=3, exif=make_exif(
        make="SONY", model="ILCE-7M3", dto="2022:03:15 06:05:04", offset="+03:00",
        gps=(31.559029, 35.473190, -430.5), size=(64, 48)))
    b.asset("plain/IMG_0012", (p, "photo"))

    # 2. RAW + JPEG, and a lone RAW (TIFFs with EXIF standing in for DNG/NEF).
    ex = make_exif(**iphone, dto="2024:05:01 09:00:00", offset="+02:00", size=(64, 48))
    write_jpeg(b.path("raw/IMG_0100.JPG"), color=(120, 90, 60), exif=ex)
    write_tiff_raw(b.path("raw/IMG_0100.DNG"), color=(120, 90, 60), exif=ex)
    b.asset("raw/IMG_0100", ("raw/IMG_0100.JPG", "photo"), ("raw/IMG_0100.DNG", "alternate_photo"))
    nikon = {"make": "NIKON CORPORATION", "model": "NIKON Z 6_2"}
    ex = make_exif(**nikon, dto="2024:05:01 10:00:00", offset="+02:00", size=(64, 48))
    write_jpeg(b.path("raw/DSC_0101.JPG"), color=(40, 90, 160), exif=ex)
    write_tiff_raw(b.path("raw/DSC_0101.NEF"), color=(40, 90, 160), exif=ex)
    b.asset("raw/DSC_0101", ("raw/DSC_0101.JPG", "photo"), ("raw/DSC_0101.NEF", "alternate_photo"))
    write_tiff_raw(b.path("raw/DSC_0102.NEF"), color=(160, 40, 90), exif=make_exif(
        **nikon, dto="2024:05:01 10:05:00", offset="+02:00", size=(64, 48)))
    b.asset("raw/DSC_0102", ("raw/DSC_0102.NEF", "photo"))

    # 3. Live Photos paired by Apple content identifier.
    write_heic(b.path("live/IMG_0200.HEIC"), color=(90, 150, 210), exif=make_exif(
        **iphone, dto="2024:06:11 18:20:30", offset="+02:00", size=(64, 64),
        gps=(43.695949, 7.271413, 12.0), makernote=apple_makernote(CID_0200)))
    write_video(b.path("live/IMG_0200.MOV"), color="0x5a96d2",
                creation_time="2024-06-11T16:20:30Z",
                apple={"content.identifier": CID_0200,
                       "creationdate": "2024-06-11T18:20:30+0200",
                       "location.ISO6709": "+43.6959+007.2714+012.000/",
                       **{k: v for k, v in iphone_mov.items()}})
    b.asset("live/IMG_0200", ("live/IMG_0200.HEIC", "photo"), ("live/IMG_0200.MOV", "paired_video"))
    # Same content id, names not sharing a base (JPEG carries the MakerNote here).
    write_jpeg(b.path("live-renamed/IMG_0201.JPG"), color=(210, 90, 150), exif=make_exif(
        **iphone, dto="2024:06:11 18:25:00", offset="+02:00", size=(64, 48),
        makernote=apple_makernote(CID_0201)))
    write_video(b.path("live-renamed/IMG_0201_1.MOV"), color="0xd25a96",
                creation_time="2024-06-11T16:25:00Z",
                apple={"content.identifier": CID_0201,
                       "creationdate": "2024-06-11T18:25:00+0200", **iphone_mov})
    b.asset("live-renamed/IMG_0201", ("live-renamed/IMG_0201.JPG", "photo"),
            ("live-renamed/IMG_0201_1.MOV", "paired_video"))

    # 4. Live Photo by fallback: no content ids, capture times 0.25 s apart.
    write_jpeg(b.path("live-fallback/IMG_0300.JPG"), color=(150, 210, 90), exif=make_exif(
        **iphone, dto="2024:06:14 09:30:00", offset="+02:00", subsec="250", size=(64, 48)))
    write_video(b.path("live-fallback/IMG_0300.MOV"), color="0x96d25a",
                creation_time="2024-06-14T07:30:00Z",
                apple={"creationdate": "2024-06-14T09:30:00+0200", **iphone_mov})
    b.asset("live-fallback/IMG_0300", ("live-fallback/IMG_0300.JPG", "photo"),
            ("live-fallback/IMG_0300.MOV", "paired_video"))

    # 5. Same base name and capture time, but different content ids: not a pair.
    write_heic(b.path("live-mismatch/IMG_0310.HEIC"), color=(30, 60, 90), exif=make_exif(
        **iphone, dto="2024:06:14 11:00:00", offset="+02:00", size=(64, 64),
        makernote=apple_makernote(CID_0310_PHOTO)))
    write_video(b.path("live-mismatch/IMG_0310.MOV"), color="0x1e3c5a",
                creation_time="2024-06-14T09:00:00Z",
                apple={"content.identifier": CID_0310_VIDEO,
                       "creationdate": "2024-06-14T11:00:00+0200", **iphone_mov})
    b.asset("live-mismatch/IMG_0310.HEIC", ("live-mismatch/IMG_0310.HEIC", "photo"))
    b.asset("live-mismatch/IMG_0310.MOV", ("live-mismatch/IMG_0310.MOV", "video"))

    # 6. Edited photo (Apple): original, rendered edit, adjustments, original adjustments.
    ex = make_exif(**iphone, dto="2024:06:13 08:00:00", offset="+02:00", size=(64, 48))
    write_jpeg(b.path("edited/IMG_0400.JPG"), color=(100, 100, 100), exif=ex)
    write_jpeg(b.path("edited/IMG_E0400.JPG"), color=(140, 120, 100), exif=ex)
    b.path("edited/IMG_0400.AAE").write_bytes(aae_bytes(
        __import__("datetime").datetime(2024, 6, 13, 9, 0, 0), "Exposure"))
    b.path("edited/IMG_O0400.AAE").write_bytes(aae_bytes(
        __import__("datetime").datetime(2024, 6, 13, 8, 30, 0), "Crop"))
    b.asset("edited/IMG_0400", ("edited/IMG_0400.JPG", "photo"),
            ("edited/IMG_E0400.JPG", "full_size_photo"),
            ("edited/IMG_0400.AAE", "adjustment_data"),
            ("edited/IMG_O0400.AAE", "adjustment_data"))

    # 7. Edited Live Photo (edited files keep the content identifier, as on iOS).
    ex = make_exif(**iphone, dto="2024:06:15 20:10:00", offset="+02:00", size=(64, 64),
                   makernote=apple_makernote(CID_0500))
    apple = {"content.identifier": CID_0500, "creationdate": "2024-06-15T20:10:00+0200", **iphone_mov}
    write_heic(b.path("edited-live/IMG_0500.HEIC"), color=(200, 60, 60), exif=ex)
    write_video(b.path("edited-live/IMG_0500.MOV"), color="0xc83c3c",
                creation_time="2024-06-15T18:10:00Z", apple=apple)
    write_heic(b.path("edited-live/IMG_E0500.HEIC"), color=(220, 100, 60), exif=ex)
    write_video(b.path("edited-live/IMG_E0500.MOV"), color="0xdc643c",
                creation_time="2024-06-15T18:10:00Z", apple=apple)
    b.path("edited-live/IMG_0500.AAE").write_bytes(aae_bytes(
        __import__("datetime").datetime(2024, 6, 15, 21, 0, 0), "LivePhotoLoop"))
    b.asset("edited-live/IMG_0500", ("edited-live/IMG_0500.HEIC", "photo"),
            ("edited-live/IMG_0500.MOV", "paired_video"),
            ("edited-live/IMG_E0500.HEIC", "full_size_photo"),
            ("edited-live/IMG_E0500.MOV", "full_size_paired_video"),
            ("edited-live/IMG_0500.AAE", "adjustment_data"))

    # 8. Edited video.
    apple = {"creationdate": "2024-06-15T21:00:00+0200", **iphone_mov}
    write_video(b.path("edited-video/IMG_0600.MOV"), color="0x3c3cc8", duration=1,
                creation_time="2024-06-15T19:00:00Z", apple=apple)
    write_video(b.path("edited-video/IMG_E0600.MOV"), color="0x6464dc", duration=0.5,
                creation_time="2024-06-15T19:00:00Z", apple=apple)
    b.asset("edited-video/IMG_0600", ("edited-video/IMG_0600.MOV", "video"),
            ("edited-video/IMG_E0600.MOV", "full_size_video"))

    # 9. Google Photos / Pixel style edit.
    pixel = {"make": "Google", "model": "Pixel 8"}
    ex = make_exif(**pixel, dto="2024:06:12 10:15:00", offset="+02:00", subsec="123", size=(64, 48))
    write_jpeg(b.path("pixel/PXL_20240612_101500123.jpg"), color=(70, 130, 180), exif=ex)
    write_jpeg(b.path("pixel/PXL_20240612_101500123-edited.jpg"), color=(90, 150, 200), exif=ex)
    b.asset("pixel/PXL_20240612_101500123", ("pixel/PXL_20240612_101500123.jpg", "photo"),
            ("pixel/PXL_20240612_101500123-edited.jpg", "full_size_photo"))

    # 10. XMP sidecars: base-name style and full-name style.
    write_tiff_raw(b.path("sidecars/DSC_0700.NEF"), color=(90, 60, 30), exif=make_exif(
        **nikon, dto="2024:04:20 16:00:00", offset="+01:00", size=(64, 48)))
    b.path("sidecars/DSC_0700.xmp").write_bytes(
        xmp_sidecar(4, "Green", ["landscape", "Alps"], "2024-04-20T16:00:00+01:00"))
    b.asset("sidecars/DSC_0700", ("sidecars/DSC_0700.NEF", "photo"), ("sidecars/DSC_0700.xmp", "sidecar"))
    write_jpeg(b.path("sidecars/DSC_0701.JPG"), color=(30, 60, 90), exif=make_exif(
        **nikon, dto="2024:04:20 16:05:00", offset="+01:00", size=(64, 48)))
    b.path("sidecars/DSC_0701.JPG.xmp").write_bytes(xmp_sidecar(2, "Red", ["Alps"]))
    b.asset("sidecars/DSC_0701", ("sidecars/DSC_0701.JPG", "photo"), ("sidecars/DSC_0701.JPG.xmp", "sidecar"))

    # 11. Standalone MP4 with creation time and GPS (udta \xa9xyz, as Android writes), 1 s.
    write_video(b.path("video/VID_20240615_183000.mp4"), color="0x40a040", duration=1,
                creation_time="2024-06-15T16:30:00Z", location="+48.8577+002.2950/")
    b.asset("video/VID_20240615_183000", ("video/VID_20240615_183000.mp4", "video"))

    # 12. Audio.
    write_m4a(b.path("audio/New Recording.m4a"))
    b.asset("audio/New Recording", ("audio/New Recording.m4a", "audio"))
    write_wav(b.path("audio/chime.wav"))
    b.asset("audio/chime", ("audio/chime.wav", "audio"))

    # 13. Less common image kinds, no EXIF.
    picture((64, 48), (250, 250, 250), 4).save(b.path("other/Screenshot 2024-06-16 at 10.00.00.png"), "PNG")
    b.asset("other/Screenshot 2024-06-16 at 10.00.00",
            ("other/Screenshot 2024-06-16 at 10.00.00.png", "photo"))
    picture((64, 48), (250, 200, 0), 5).save(b.path("other/sticker.webp"), "WEBP", quality=50, method=4)
    b.asset("other/sticker", ("other/sticker.webp", "photo"))
    frames = [picture((32, 24), c, i).convert("P", palette=Image.ADAPTIVE, colors=16)
              for i, c in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)])]
    frames[0].save(b.path("other/animation.gif"), "GIF", save_all=True, append_images=frames[1:],
                   duration=100, loop=0)
    b.asset("other/animation", ("other/animation.gif", "photo"))
    picture((32, 24), (10, 200, 120), 6).save(b.path("other/scan.bmp"), "BMP")
    b.asset("other/scan", ("other/scan.bmp", "photo"))

    # 14. Non-media: counted and skipped.
    b.path("notes.txt").write_bytes("Summer 2024 — pick the best for the album.\n".encode())
    b.skip("notes.txt", "not_media")
    b.path("album.json").write_bytes(
        json.dumps({"title": "Summer 2024", "cover": "plain/IMG_0010.JPG"}, indent=2).encode() + b"\n")
    b.skip("album.json", "not_media")
    b.path(".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(24))
    b.skip(".DS_Store", "not_media")
    b.path("plain/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(8))
    b.skip("plain/.DS_Store", "not_media")
    # Thumbs.db is an OLE compound file; its signature plus padding is enough.
    b.path("raw/Thumbs.db").write_bytes(bytes.fromhex("d0cf11e0a1b11ae1") + bytes(56))
    b.skip("raw/Thumbs.db", "not_media")

    # 15. Broken input.
    full = b.root / "broken" / ".tmp.jpg"
    full.parent.mkdir(parents=True, exist_ok=True)
    write_jpeg(full, color=(128, 64, 32), exif=make_exif(
        **iphone, dto="2024:06:01 12:00:00", offset="+02:00", size=(64, 48),
        gps=(48.858370, 2.294481, 35.0), makernote=apple_makernote("A1B2C3D4-0001-4E5F-8A9B-0000000000FF")))
    data = full.read_bytes()
    full.unlink()
    start, end = jpeg_app1_span(data)
    b.path("broken/truncated.jpg").write_bytes(data[: start + (end - start) // 2])
    b.asset("broken/truncated", ("broken/truncated.jpg", "photo"))
    write_jpeg(full, color=(32, 64, 128))
    data = full.read_bytes()
    full.unlink()
    b.path("broken/corrupt_exif.jpg").write_bytes(data[:2] + corrupt_exif_app1() + data[2:])
    b.asset("broken/corrupt_exif", ("broken/corrupt_exif.jpg", "photo"))
    b.path("broken/garbage.mov").write_bytes(random.Random(20240612).randbytes(2048))
    b.asset("broken/garbage", ("broken/garbage.mov", "video"))
    b.path("broken/empty.jpg").write_bytes(b"")
    b.skip("broken/empty.jpg", "empty")

    # 16. Folder name with spaces and non-ASCII (NFC) characters.
    p = "Vacances été 2023/IMG_0800.JPG"
    write_jpeg(b.path(p), color=(250, 180, 60), exif=make_exif(
        **iphone, dto="2023:08:05 17:45:00", offset="+02:00", size=(64, 48),
        gps=(43.552847, 7.017369, 3.0)))
    b.asset("Vacances été 2023/IMG_0800", (p, "photo"))


# ---------------------------------------------------------------------------


def run_exiftool(root, files):
    cmd = ["exiftool", "-j", "-n", "-G1", "-a", "-api", "largefilesupport=1",
           "-charset", "filename=utf8", "--"] + sorted(files)
    res = subprocess.run(cmd, cwd=root, capture_output=True)
    # exiftool exits 1 when some file has an error (e.g. the empty one); that's expected.
    if res.returncode not in (0, 1) or not res.stdout:
        sys.stderr.write(res.stderr.decode(errors="replace"))
        raise SystemExit(f"exiftool failed ({res.returncode})")
    entries = json.loads(res.stdout.decode("utf-8"))
    out = []
    for e in entries:
        clean = {}
        for k, v in e.items():
            if k.startswith("System:") or k == "ExifTool:ExifToolVersion":
                continue
            clean[k] = v
        out.append(clean)
    out.sort(key=lambda e: e["SourceFile"])
    if sorted(e["SourceFile"] for e in out) != sorted(files):
        raise SystemExit("exiftool did not report every file")
    return out


def dump_json(path, value):
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"fixtures folder (default: {DEFAULT_OUT})")
    ap.add_argument("--no-exiftool", action="store_true", help="do not (re)write exiftool.json")
    args = ap.parse_args()

    out = args.out
    root = out / "library"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)

    b = Builder(root)
    build(b)

    # Consistency: every file is either in exactly one asset or skipped.
    listed = [r["path"] for a in b.assets for r in a["resources"]] + [s["path"] for s in b.skipped]
    on_disk = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    if sorted(listed) != on_disk or len(set(listed)) != len(listed) or sorted(b.files) != on_disk:
        raise SystemExit(f"expected.json out of sync with files:\n{sorted(listed)}\n{on_disk}")

    for p in sorted(root.rglob("*"), reverse=True):
        os.utime(p, (FIXED_MTIME, FIXED_MTIME))
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))

    expected = {
        "assets": sorted(b.assets, key=lambda a: a["name"]),
        "skipped": sorted(b.skipped, key=lambda s: s["path"]),
    }
    dump_json(out / "expected.json", expected)
    if not args.no_exiftool:
        dump_json(out / "exiftool.json", run_exiftool(root, on_disk))
    total = sum((root / f).stat().st_size for f in on_disk)
    print(f"{len(on_disk)} files, {total} bytes, {len(b.assets)} assets, {len(b.skipped)} skipped -> {out}")


if __name__ == "__main__":
    main()
