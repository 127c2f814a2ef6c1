//! [`Text`]: a string the daemon builds for every reply (a vote's reason), kept
//! off the heap in the usual cases.
//!
//! An allowed admission carries a vote per guard, and each vote a reason: a
//! fixed sentence, or a short one with numbers in it ("1 of burst 100 taken").
//! As `String`s they were a heap allocation per vote and reply; a `Text` refers
//! to a fixed sentence without copying it and holds a formatted one of up to
//! [`Text::INLINE`] bytes in place, which covers every reason with numbers the
//! daemon writes (the longest, with two `u32::MAX`, is 36 bytes). Longer texts
//! go on the heap as before.
//!
//! On the wire a `Text` is a plain string (u64 length, UTF-8 bytes), as the
//! `String` it replaced; which of the three forms holds it is not visible there,
//! nor to `==`, `Hash` or `Ord`.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use arrayvec::ArrayString;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A string that is a `&'static str`, a short text held in place, or a
/// `String`; see the module doc.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    Fixed(&'static str),
    Inline(ArrayString<{ Text::INLINE }>),
    Heap(String),
}

impl Text {
    /// The longest text held without a heap allocation, in bytes. 40 keeps a
    /// `Text` at 48 bytes, the size of a `Cow<str>` and a bit.
    pub const INLINE: usize = 40;

    /// The empty text, ready to be pushed to in place.
    #[inline]
    pub const fn new() -> Text {
        Text(Repr::Inline(ArrayString::new_const()))
    }

    /// A fixed text, referred to and never copied.
    #[inline]
    pub const fn fixed(text: &'static str) -> Text {
        Text(Repr::Fixed(text))
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Fixed(text) => text,
            Repr::Inline(text) => text.as_str(),
            Repr::Heap(text) => text.as_str(),
        }
    }

    /// Appends `more`, moving to the heap only when the whole no longer fits
    /// in [`Text::INLINE`] bytes.
    #[inline]
    pub fn push_str(&mut self, more: &str) {
        let grown = match &mut self.0 {
            Repr::Heap(text) => return text.push_str(more),
            Repr::Inline(text) => match text.try_push_str(more) {
                Ok(()) => return,
                Err(_) => concat(text.as_str(), more),
            },
            Repr::Fixed(text) => concat(text, more),
        };
        self.0 = grown;
    }

    /// Whether the text is on the heap (only a text longer than
    /// [`Text::INLINE`] bytes that is not a fixed one is).
    #[inline]
    pub fn is_heap_allocated(&self) -> bool {
        matches!(self.0, Repr::Heap(_))
    }

    pub fn into_string(self) -> String {
        match self.0 {
            Repr::Heap(text) => text,
            _ => self.as_str().to_owned(),
        }
    }
}

/// `head` then `tail`, in place when it fits.
#[cold]
fn concat(head: &str, tail: &str) -> Repr {
    let mut inline = ArrayString::new();
    if inline.try_push_str(head).is_ok() && inline.try_push_str(tail).is_ok() {
        return Repr::Inline(inline);
    }
    let mut heap = String::with_capacity(head.len() + tail.len());
    heap.push_str(head);
    heap.push_str(tail);
    Repr::Heap(heap)
}

impl Default for Text {
    fn default() -> Text {
        Text::new()
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// `write!` into a text; the daemon's hot paths use [`Text::push_str`], which
/// skips the `fmt` machinery.
impl fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Text) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Text) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// A copy: in place when short, else on the heap. For a `&'static str` that
/// need not be copied, [`Text::fixed`].
impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text(concat(text, ""))
    }
}

/// Takes the `String` over (no copy, even when short).
impl From<String> for Text {
    fn from(text: String) -> Text {
        Text(Repr::Heap(text))
    }
}

/// A borrowed `Cow` is a fixed text; an owned one is taken over.
impl From<Cow<'static, str>> for Text {
    fn from(text: Cow<'static, str>) -> Text {
        match text {
            Cow::Borrowed(text) => Text::fixed(text),
            Cow::Owned(text) => text.into(),
        }
    }
}

impl From<Text> for String {
    fn from(text: Text) -> String {
        text.into_string()
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Through `deserialize_str`, so a decoder that reads from a slice (bincode's
/// `SliceReader`) lends the text and a short one is copied in place; a decoder
/// that has already made a `String` hands it over.
impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
        struct TextVisitor;

        impl Visitor<'_> for TextVisitor {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text, E> {
                Ok(Text::from(text))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Text, E> {
                Ok(Text::from(text))
            }
        }

        deserializer.deserialize_str(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_stay_in_place_and_long_ones_move_to_the_heap() {
        let mut text = Text::fixed("1");
        text.push_str(" of burst ");
        text.push_str("4294967295 of 4294967295 in");
        assert_eq!(text.len(), Text::INLINE - 2);
        assert!(!text.is_heap_allocated());
        text.push_str(" flight");
        assert!(text.is_heap_allocated());
        assert_eq!(text, "1 of burst 4294967295 of 4294967295 in flight");

        let long = "a fixed reason much longer than forty bytes, not copied";
        assert!(!Text::fixed(long).is_heap_allocated());
        assert!(Text::from(long).is_heap_allocated());
        assert!(!Text::from("short").is_heap_allocated());
    }

    #[test]
    fn every_form_of_the_same_text_is_equal_and_hashes_alike() {
        use std::collections::hash_map::DefaultHasher;
        let forms = [
            Text::fixed("same"),
            Text::from("same"),
            Text::from(String::from("same")),
        ];
        let hash = |t: &Text| {
            let mut h = DefaultHasher::new();
            t.hash(&mut h);
            h.finish()
        };
        for form in &forms {
            assert_eq!(form, &forms[0]);
            assert_eq!(hash(form), hash(&forms[0]));
            assert_eq!(format!("{form:?}"), "\"same\"");
        }
    }

    #[test]
    fn the_wire_form_is_a_plain_string() {
        for text in ["", "1 of burst 100000000 taken", &"x".repeat(100)] {
            let as_text = crate::encode(&Text::from(text)).unwrap();
            assert_eq!(as_text, crate::encode(&text.to_owned()).unwrap());
            let back: Text = crate::decode(&as_text).unwrap();
            assert_eq!(back, text);
            assert_eq!(back.is_heap_allocated(), text.len() > Text::INLINE);
        }
    }
}
