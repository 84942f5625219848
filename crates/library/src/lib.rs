//! Indexing a folder tree as a photo library: scan, classify, group, read metadata, watch.
