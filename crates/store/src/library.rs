//! The library index and its change history (filled in by the library issue).
