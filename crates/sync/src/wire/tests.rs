//! Whole-protocol tests: every message against bytes built by hand from the seed's field tables (and
//! docs/sync-protocol.md for ferry's extensions), every prefix of every message, malformed input of each
//! kind, and property tests that the decoder never panics and never reads past a message.

use std::collections::BTreeMap;
use std::io::Cursor;

use bytes::{Bytes, BytesMut};
use ferry_files::{NameError, SafeName};
use proptest::prelude::*;

use super::*;
use crate::{ClientId, ClientIdError, Md5Sum};

/// md5("hi"), as `md5sum` prints it: 49f68a5c8493ec2c0bf489821c21fc3b.
const MD5_HI: [u8; 16] =
    [0x49, 0xf6, 0x8a, 0x5c, 0x84, 0x93, 0xec, 0x2c, 0x0b, 0xf4, 0x89, 0x82, 0x1c, 0x21, 0xfc, 0x3b];
/// md5("hello world"): 5eb63bbbe01eeed093cb22bb8f5acdc3.
const MD5_HW: [u8; 16] =
    [0x5e, 0xb6, 0x3b, 0xbb, 0xe0, 0x1e, 0xee, 0xd0, 0x93, 0xcb, 0x22, 0xbb, 0x8f, 0x5a, 0xcd, 0xc3];

fn name(s: &str) -> SafeName {
    SafeName::parse(s, 1024).unwrap()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn encode(m: &Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.encode(&mut b);
    assert_eq!(b.len(), m.encoded_len());
    b.to_vec()
}

fn check(bytes: &[u8], limits: &Limits) -> Result<u64, DecodeError> {
    let mut c = Cursor::new(bytes);
    Message::check(&mut c, limits).map(|()| c.position())
}

fn parse(bytes: &[u8], limits: &Limits) -> Result<(Message, u64), DecodeError> {
    let mut c = Cursor::new(bytes);
    Message::parse(&mut c, limits).map(|m| (m, c.position()))
}

fn invalid(bytes: &[u8], limits: &Limits) -> (WireError, Option<u64>) {
    match parse(bytes, limits) {
        Err(DecodeError::Invalid { error, skip }) => {
            // check agrees wherever the refusal does not need an allocated name.
            if let Err(e) = check(bytes, limits) {
                assert_eq!(e, DecodeError::Invalid { error: error.clone(), skip });
            }
            (error, skip)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The message encodes to exactly `vector`, decodes from it, and is incomplete at every shorter prefix.
fn assert_vector(message: Message, vector: &[u8]) {
    let limits = Limits::default();
    assert_eq!(encode(&message), vector, "encoding of {message:?}");
    assert_eq!(check(vector, &limits), Ok(vector.len() as u64));
    assert_eq!(parse(vector, &limits), Ok((message.clone(), vector.len() as u64)));
    for cut in 0..vector.len() {
        assert_eq!(check(&vector[..cut], &limits), Err(DecodeError::Incomplete), "check of {cut} bytes");
        assert_eq!(parse(&vector[..cut], &limits), Err(DecodeError::Incomplete), "parse of {cut} bytes");
    }
    // Followed by more bytes (the next message, or garbage), it still takes only its own.
    let mut longer = vector.to_vec();
    longer.extend_from_slice(&[0xff, 0xee, 0x02, 0x00]);
    assert_eq!(parse(&longer, &limits), Ok((message, vector.len() as u64)));
}

#[test]
fn file_chunk_vector() {
    #[rustfmt::skip]
    let vector = cat(&[
        &[0x01, 0x00],              // message type: File Chunk
        &MD5_HI,                    // md5 digest of this chunk
        &[0x02, 0x00, 0x00, 0x00],  // chunk size: 2
        &[0x09, 0x00],              // filename length: 9
        b"dir/a.txt",               // filename
        b"hi",                      // the chunk
    ]);
    let message = Message::FileChunk { md5: Md5Sum(MD5_HI), name: name("dir/a.txt"), data: Bytes::from_static(b"hi") };
    assert_eq!(Md5Sum::of(b"hi"), Md5Sum(MD5_HI));
    assert_vector(message, &vector);
}

#[test]
fn status_vectors_for_every_code() {
    let codes: [(StatusCode, [u8; 2]); 9] = [
        (StatusCode::Ok, [0x01, 0x00]),
        (StatusCode::ResendChecksum, [0x02, 0x00]),
        (StatusCode::ResendChunkSize, [0x04, 0x00]),
        (StatusCode::AbortChecksums, [0x08, 0x00]),
        (StatusCode::AbortChunkSizes, [0x10, 0x00]),
        (StatusCode::NoFileToDelete, [0x20, 0x00]),
        (StatusCode::FileLocked, [0x40, 0x00]),
        (StatusCode::FileInUse, [0x80, 0x00]),
        (StatusCode::KeepAlive, [0x00, 0x80]),
    ];
    for (code, le) in codes {
        // message type: Status Message (0x0002), then the message code.
        assert_vector(Message::Status(code), &cat(&[&[0x02, 0x00], &le]));
    }
}

#[test]
fn named_message_vectors() {
    type Make = fn(Md5Sum, SafeName) -> Message;
    let kinds: [(u8, Make); 4] = [
        (0x03, |md5, name| Message::Finished { md5, name }),
        (0x04, |md5, name| Message::AbortFile { md5, name }),
        (0x05, |md5, name| Message::DeleteFile { md5, name }),
        (0x06, |md5, name| Message::RequestUpdate { md5, name }),
    ];
    for (ty, make) in kinds {
        #[rustfmt::skip]
        let vector = cat(&[
            &[ty, 0x00],    // message type
            &MD5_HW,        // md5 digest (of the whole file)
            &[0x05, 0x00],  // filename length: 5
            b"b.bin",       // filename
        ]);
        assert_vector(make(Md5Sum(MD5_HW), name("b.bin")), &vector);
        assert_eq!(encode(&make(Md5Sum::ZERO, name("x")))[2..18], [0u8; 16]);
    }
}

#[test]
fn long_name_length_is_little_endian() {
    let long = format!("{}/{}", "d".repeat(0x90), "n".repeat(0x92));
    let vector = encode(&Message::DeleteFile { md5: Md5Sum::ZERO, name: name(&long) });
    assert_eq!(&vector[18..20], &[0x23, 0x01]);
    assert_eq!(vector.len(), 20 + 0x123);
}

#[test]
fn hello_vector() {
    #[rustfmt::skip]
    let vector = cat(&[
        &[0x01, 0x01],  // message type: Hello (0x0101)
        &[0x01, 0x00],  // protocol version 1
        &[0x02, 0x00],  // role: push
        &[0x05, 0x00],  // client id length: 5
        b"alice",       // client id
    ]);
    let hello = Hello::new(Role::Push, ClientId::parse("alice").unwrap());
    assert_eq!(hello.version, PROTOCOL_VERSION);
    assert_vector(Message::Hello(hello), &vector);
    let update = encode(&Message::Hello(Hello::new(Role::Update, ClientId::parse("b").unwrap())));
    assert_eq!(update, [0x01, 0x01, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00, b'b']);
}

/// A META-DATA with a file and a tombstone, and its bytes.
fn metadata_sample() -> (Metadata, Vec<u8>) {
    let mut entries = BTreeMap::new();
    entries.insert(
        name("a.txt"),
        MetaEntry {
            version: 3,
            mtime_ns: 0x0102_0304_0506_0708,
            state: EntryState::File { size: 11, md5: Md5Sum(MD5_HW) },
        },
    );
    entries.insert(name("gone"), MetaEntry { version: 7, mtime_ns: -1, state: EntryState::Deleted });
    let metadata = Metadata { last_version: 9, entries };
    #[rustfmt::skip]
    let vector = cat(&[
        &[0x02, 0x01],                                      // message type: META-DATA (0x0102)
        &[0x01, 0x00],                                      // format 1
        &[0x09, 0, 0, 0, 0, 0, 0, 0],                       // last version: 9
        &[0x02, 0, 0, 0],                                   // entry count: 2
        &[95, 0, 0, 0],                                     // body length: (43 + 5) + (43 + 4)
        // entry "a.txt"
        &[0x00],                                            // kind: file
        &[0x03, 0, 0, 0, 0, 0, 0, 0],                       // version 3
        &[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01],  // mtime_ns
        &[11, 0, 0, 0, 0, 0, 0, 0],                         // size 11
        &MD5_HW,                                            // md5
        &[0x05, 0x00],                                      // name length 5
        b"a.txt",
        // entry "gone"
        &[0x01],                                            // kind: tombstone
        &[0x07, 0, 0, 0, 0, 0, 0, 0],                       // version 7
        &[0xff; 8],                                         // mtime_ns: -1
        &[0; 8],                                            // size 0
        &[0; 16],                                           // md5 zeros
        &[0x04, 0x00],                                      // name length 4
        b"gone",
    ]);
    (metadata, vector)
}

#[test]
fn metadata_vector() {
    let (metadata, vector) = metadata_sample();
    assert_vector(Message::MetaData(metadata), &vector);
    let empty = Metadata::default();
    assert_vector(Message::MetaData(empty), &[0x02, 0x01, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn unknown_type_cannot_be_skipped() {
    let limits = Limits::default();
    for ty in [[0x00, 0x00], [0x07, 0x00], [0x00, 0x01], [0x03, 0x01], [0xff, 0xff]] {
        let (error, skip) = invalid(&cat(&[&ty, &[0; 30]]), &limits);
        assert_eq!(error, WireError::UnknownType(u16::from_le_bytes(ty)));
        assert_eq!(skip, None);
        assert_eq!(error.status(), None);
    }
    // Refused from the type field alone.
    assert!(matches!(check(&[0x07, 0x00], &limits), Err(DecodeError::Invalid { skip: None, .. })));
    assert_eq!(WireError::UnknownType(7).to_string(), "unknown message type 0x0007");
}

#[test]
fn unknown_status_code_is_skippable() {
    let limits = Limits::default();
    for code in [0x0000u16, 0x0003, 0x00ff, 0x0041, 0x8001, 0xffff] {
        let bytes = cat(&[&[0x02, 0x00], &code.to_le_bytes()]);
        assert_eq!(invalid(&bytes, &limits), (WireError::UnknownStatus(code), Some(4)));
    }
    assert_eq!(WireError::UnknownStatus(0x41).to_string(), "Status Message: unknown status code 0x0041");
}

#[test]
fn chunk_size_is_refused_before_the_chunk_arrives() {
    let limits = Limits { max_chunk_size: 1000, ..Limits::default() };
    for size in [0u32, 1001, u32::MAX] {
        // Only the header and the name: the chunk itself is not there (and may never be buffered).
        let bytes = cat(&[&[0x01, 0x00], &MD5_HI, &size.to_le_bytes(), &[0x01, 0x00], b"f"]);
        let (error, skip) = invalid(&bytes, &limits);
        assert_eq!(error, WireError::ChunkSize { name: "f".into(), md5: Md5Sum(MD5_HI), size, max: 1000 });
        assert_eq!(skip, Some(24 + 1 + u64::from(size)));
        assert_eq!(error.status(), Some(StatusCode::ResendChunkSize));
    }
    let exact = Message::FileChunk { md5: Md5Sum::ZERO, name: name("f"), data: Bytes::from(vec![7u8; 1000]) };
    assert!(parse(&encode(&exact), &limits).is_ok());
    let error = WireError::ChunkSize { name: "f".into(), md5: Md5Sum::ZERO, size: 0, max: 1000 };
    assert_eq!(error.to_string(), r#"File Chunk for "f" declares 0 bytes; a chunk is 1 to 1000 bytes"#);
}

#[test]
fn long_names_are_refused_from_the_header() {
    let limits = Limits { max_name_len: 8, ..Limits::default() };
    // File Chunk: 24 header bytes say a 9-byte name and a 3-byte chunk.
    let chunk = cat(&[&[0x01, 0x00], &MD5_HI, &[3, 0, 0, 0], &[9, 0]]);
    let (error, skip) = invalid(&chunk, &limits);
    assert_eq!(error, WireError::NameTooLong { ty: MessageType::FileChunk, len: 9, max: 8 });
    assert_eq!(skip, Some(24 + 9 + 3));
    assert_eq!(error.to_string(), "File Chunk: file name of 9 bytes, limit is 8");
    for (ty, status) in [
        (MessageType::Finished, StatusCode::FileInUse),
        (MessageType::AbortFile, StatusCode::FileInUse),
        (MessageType::DeleteFile, StatusCode::NoFileToDelete),
        (MessageType::RequestUpdate, StatusCode::FileInUse),
    ] {
        let bytes = cat(&[&(ty as u16).to_le_bytes(), &MD5_HW, &[0xff, 0xff]]);
        let (error, skip) = invalid(&bytes, &limits);
        assert_eq!(error, WireError::NameTooLong { ty, len: 0xffff, max: 8 });
        assert_eq!(skip, Some(20 + 0xffff));
        assert_eq!(error.status(), Some(status));
    }
}

#[test]
fn names_must_be_utf8() {
    let limits = Limits::default();
    let bytes = cat(&[&[0x06, 0x00], &MD5_HW, &[2, 0], &[0xc3, 0x28]]);
    assert_eq!(invalid(&bytes, &limits), (WireError::NameNotUtf8 { ty: MessageType::RequestUpdate }, Some(22)));
    let chunk = cat(&[&[0x01, 0x00], &MD5_HI, &[2, 0, 0, 0], &[1, 0], &[0xff], b"hi"]);
    assert_eq!(invalid(&chunk, &limits), (WireError::NameNotUtf8 { ty: MessageType::FileChunk }, Some(27)));
}

#[test]
fn unsafe_names_are_refused() {
    let limits = Limits::default();
    let cases: [(&[u8], NameError); 7] = [
        (b"", NameError::Empty),
        (b"../etc/passwd", NameError::DotDot("../etc/passwd".into())),
        (b"a/../../x", NameError::DotDot("a/../../x".into())),
        (b"/etc/passwd", NameError::Absolute("/etc/passwd".into())),
        (b"a\0b", NameError::Nul),
        (b"a\nb", NameError::Control(0x0a)),
        (b".ferry-sync/meta", NameError::Reserved(".ferry-sync/meta".into())),
    ];
    for (raw, expected) in cases {
        let len = (raw.len() as u16).to_le_bytes();
        let delete = cat(&[&[0x05, 0x00], &MD5_HW, &len, raw]);
        let (error, skip) = invalid(&delete, &limits);
        assert_eq!(error, WireError::BadName { ty: MessageType::DeleteFile, error: expected.clone() });
        assert_eq!(skip, Some(20 + raw.len() as u64));
        assert_eq!(error.status(), Some(StatusCode::NoFileToDelete));
        let chunk = cat(&[&[0x01, 0x00], &MD5_HI, &[2, 0, 0, 0], &len, raw, b"hi"]);
        let (error, skip) = invalid(&chunk, &limits);
        assert_eq!(error, WireError::BadName { ty: MessageType::FileChunk, error: expected });
        assert_eq!(skip, Some(26 + raw.len() as u64));
        assert_eq!(error.status(), Some(StatusCode::FileInUse));
    }
    let (error, _) = invalid(&cat(&[&[0x03, 0x00], &MD5_HW, &[4, 0], b"/abs"]), &limits);
    assert_eq!(error.to_string(), r#"Finished / Close File: name is absolute: "/abs""#);
}

#[test]
fn bad_hellos() {
    let limits = Limits::default();
    let hello = |role: u16, id: &[u8]| {
        cat(&[&[0x01, 0x01, 0x01, 0x00], &role.to_le_bytes(), &(id.len() as u16).to_le_bytes(), id])
    };
    assert_eq!(invalid(&hello(3, b"alice"), &limits), (WireError::UnknownRole(3), Some(13)));
    assert_eq!(invalid(&hello(0, b"alice"), &limits), (WireError::UnknownRole(0), Some(13)));
    assert_eq!(invalid(&hello(1, b""), &limits), (WireError::BadClientId(ClientIdError::Empty), Some(8)));
    assert_eq!(invalid(&hello(1, b"a/b"), &limits), (WireError::BadClientId(ClientIdError::BadByte(b'/')), Some(11)));
    assert_eq!(invalid(&hello(1, b".x"), &limits), (WireError::BadClientId(ClientIdError::BadStart), Some(10)));
    // An over-long id is refused from the 8-byte header.
    let long = cat(&[&[0x01, 0x01, 0x01, 0x00, 0x01, 0x00], &[65, 0]]);
    assert_eq!(invalid(&long, &limits), (WireError::BadClientId(ClientIdError::TooLong(65)), Some(8 + 65)));
    // Another version decodes: answering it is the server's decision, not a malformed message.
    let v2 = cat(&[&[0x01, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0x00], b"z"]);
    let (m, _) = parse(&v2, &limits).unwrap();
    assert_eq!(m, Message::Hello(Hello { version: 2, role: Role::Update, client_id: ClientId::parse("z").unwrap() }));
}

/// A META-DATA message with `body` as its entries.
fn metadata_bytes(format: u16, last_version: u64, count: u32, body: &[u8]) -> Vec<u8> {
    cat(&[
        &[0x02, 0x01],
        &format.to_le_bytes(),
        &last_version.to_le_bytes(),
        &count.to_le_bytes(),
        &(body.len() as u32).to_le_bytes(),
        body,
    ])
}

fn entry(kind: u8, version: u64, size: u64, md5: [u8; 16], name: &[u8]) -> Vec<u8> {
    cat(&[
        &[kind],
        &version.to_le_bytes(),
        &5i64.to_le_bytes(),
        &size.to_le_bytes(),
        &md5,
        &(name.len() as u16).to_le_bytes(),
        name,
    ])
}

#[test]
fn malformed_metadata() {
    let limits = Limits::default();
    let file = |v, n: &[u8]| entry(0, v, 1, MD5_HI, n);
    let malformed = |why| WireError::MalformedMetadata(why);
    let cases: Vec<(Vec<u8>, WireError)> = vec![
        (metadata_bytes(2, 9, 0, &[]), WireError::MetadataFormat(2)),
        (metadata_bytes(1, 9, 2, &file(1, b"a")), malformed("an entry runs past the body length")),
        (metadata_bytes(1, 9, 1, &cat(&[&file(1, b"a"), &[0]])), malformed("the body is longer than its entries")),
        (
            metadata_bytes(1, 9, 2, &cat(&[&file(1, b"b"), &file(1, b"a")])),
            malformed("names are not in strictly ascending order"),
        ),
        (
            metadata_bytes(1, 9, 2, &cat(&[&file(1, b"a"), &file(2, b"a")])),
            malformed("names are not in strictly ascending order"),
        ),
        (metadata_bytes(1, 9, 1, &file(0, b"a")), malformed("an entry's version is 0 or above the last version")),
        (metadata_bytes(1, 9, 1, &file(10, b"a")), malformed("an entry's version is 0 or above the last version")),
        (metadata_bytes(1, 9, 1, &entry(1, 1, 0, MD5_HI, b"a")), malformed("a tombstone has a size or an md5")),
        (metadata_bytes(1, 9, 1, &entry(1, 1, 3, [0; 16], b"a")), malformed("a tombstone has a size or an md5")),
        (metadata_bytes(1, 9, 1, &entry(2, 1, 0, [0; 16], b"a")), malformed("unknown entry kind")),
        (metadata_bytes(1, 9, 1, &file(1, &[0xff])), WireError::NameNotUtf8 { ty: MessageType::MetaData }),
        (
            metadata_bytes(1, 9, 1, &file(1, b"../x")),
            WireError::BadName { ty: MessageType::MetaData, error: NameError::DotDot("../x".into()) },
        ),
    ];
    for (bytes, expected) in cases {
        let (error, skip) = invalid(&bytes, &limits);
        assert_eq!(error, expected);
        assert_eq!(skip, Some(bytes.len() as u64));
        assert_eq!(error.status(), None);
    }
    assert_eq!(malformed("unknown entry kind").to_string(), "malformed META-DATA: unknown entry kind");
}

#[test]
fn metadata_limits_are_enforced_from_the_header() {
    let limits = Limits { max_metadata_entries: 2, max_metadata_bytes: 100, max_name_len: 4, ..Limits::default() };
    // Headers alone: the bodies they announce never arrive.
    let header = |count: u32, body_len: u32| {
        cat(&[&[0x02, 0x01, 0x01, 0x00], &9u64.to_le_bytes(), &count.to_le_bytes(), &body_len.to_le_bytes()])
    };
    assert_eq!(invalid(&header(3, 10), &limits), (WireError::TooManyEntries { count: 3, max: 2 }, Some(30)));
    assert_eq!(invalid(&header(1, 101), &limits), (WireError::MetadataTooLarge { len: 101, max: 100 }, Some(121)));
    assert_eq!(check(&header(1, 100), &limits), Err(DecodeError::Incomplete));
    let long = metadata_bytes(1, 9, 1, &entry(0, 1, 1, MD5_HI, b"abcde"));
    let expected = WireError::NameTooLong { ty: MessageType::MetaData, len: 5, max: 4 };
    assert_eq!(invalid(&long, &limits), (expected, Some(long.len() as u64)));
    assert_eq!(WireError::TooManyEntries { count: 3, max: 2 }.to_string(), "META-DATA holds 3 entries, limit is 2");
}

#[test]
fn a_refused_message_can_be_skipped() {
    let limits = Limits { max_chunk_size: 4, ..Limits::default() };
    let too_big = Message::FileChunk { md5: Md5Sum::ZERO, name: name("f"), data: Bytes::from_static(b"12345") };
    let next = Message::Status(StatusCode::KeepAlive);
    let mut stream = encode(&too_big);
    stream.extend(encode(&next));
    let Err(DecodeError::Invalid { skip: Some(skip), .. }) = parse(&stream, &limits) else { panic!() };
    let skip = skip as usize;
    assert_eq!(parse(&stream[skip..], &limits), Ok((next, 4)));
}

fn safe_name() -> impl Strategy<Value = SafeName> {
    "[a-zA-Z0-9 ._()é-]{1,12}(/[a-zA-Z0-9 ._-]{1,12}){0,2}"
        .prop_filter_map("unsafe name", |s| SafeName::parse(&s, 1024).ok())
}

fn md5() -> impl Strategy<Value = Md5Sum> {
    any::<[u8; 16]>().prop_map(Md5Sum)
}

fn metadata() -> impl Strategy<Value = Metadata> {
    let state = prop_oneof![
        (any::<u64>(), md5()).prop_map(|(size, md5)| EntryState::File { size, md5 }),
        Just(EntryState::Deleted),
    ];
    (1u64..1000, proptest::collection::btree_map(safe_name(), (0u64..1000, any::<i64>(), state), 0..6)).prop_map(
        |(extra, entries)| {
            let entries: BTreeMap<_, _> = entries
                .into_iter()
                .map(|(n, (v, mtime_ns, state))| (n, MetaEntry { version: v + 1, mtime_ns, state }))
                .collect();
            Metadata { last_version: 1000 + extra, entries }
        },
    )
}

fn message() -> impl Strategy<Value = Message> {
    let named = || (md5(), safe_name());
    prop_oneof![
        (md5(), safe_name(), proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(md5, name, data)| Message::FileChunk { md5, name, data: data.into() }),
        proptest::sample::select(StatusCode::ALL.to_vec()).prop_map(Message::Status),
        named().prop_map(|(md5, name)| Message::Finished { md5, name }),
        named().prop_map(|(md5, name)| Message::AbortFile { md5, name }),
        named().prop_map(|(md5, name)| Message::DeleteFile { md5, name }),
        named().prop_map(|(md5, name)| Message::RequestUpdate { md5, name }),
        (any::<u16>(), prop_oneof![Just(Role::Update), Just(Role::Push)], "[a-z0-9][a-z0-9._-]{0,63}").prop_map(
            |(version, role, id)| Message::Hello(Hello { version, role, client_id: ClientId::parse(&id).unwrap() })
        ),
        metadata().prop_map(Message::MetaData),
    ]
}

/// Decodes a buffer the way a connection does; returns the messages and the refusals in order.
fn drain(mut buf: &[u8], limits: &Limits) -> (Vec<Message>, usize) {
    let mut out = Vec::new();
    let mut refused = 0;
    loop {
        match parse(buf, limits) {
            Ok((m, n)) => {
                out.push(m);
                buf = &buf[n as usize..];
            }
            Err(DecodeError::Incomplete) => return (out, refused),
            Err(DecodeError::Invalid { skip: Some(n), .. }) if (n as usize) <= buf.len() => {
                refused += 1;
                buf = &buf[n as usize..];
            }
            Err(DecodeError::Invalid { .. }) => return (out, refused + 1),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn messages_round_trip(m in message()) {
        let bytes = encode(&m);
        prop_assert_eq!(check(&bytes, &Limits::default()), Ok(bytes.len() as u64));
        prop_assert_eq!(parse(&bytes, &Limits::default()), Ok((m, bytes.len() as u64)));
    }

    #[test]
    fn a_stream_decodes_message_by_message(ms in proptest::collection::vec(message(), 0..8), cut in any::<prop::sample::Index>()) {
        let stream: Vec<u8> = ms.iter().flat_map(encode).collect();
        let (decoded, refused) = drain(&stream, &Limits::default());
        prop_assert_eq!(refused, 0);
        prop_assert_eq!(&decoded, &ms);
        // Any prefix decodes to a prefix of the messages: never a different message, never a refusal.
        let cut = if stream.is_empty() { 0 } else { cut.index(stream.len() + 1) };
        let (partial, refused) = drain(&stream[..cut], &Limits::default());
        prop_assert_eq!(refused, 0);
        prop_assert_eq!(&partial[..], &ms[..partial.len()]);
    }

    #[test]
    fn random_bytes_never_panic_nor_read_past_a_message(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let limits = Limits { max_chunk_size: 64, max_name_len: 32, ..Limits::default() };
        random_input_is_decoded_safely(&bytes, &limits)?;
    }

    #[test]
    fn random_bytes_behind_a_valid_type_never_panic(
        ty in proptest::sample::select(MessageType::ALL.to_vec()),
        rest in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let limits = Limits { max_chunk_size: 64, max_name_len: 32, ..Limits::default() };
        let bytes = cat(&[&(ty as u16).to_le_bytes(), &rest]);
        random_input_is_decoded_safely(&bytes, &limits)?;
    }

    #[test]
    fn corrupted_messages_never_panic(m in message(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = encode(&m);
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        random_input_is_decoded_safely(&bytes, &Limits::default())?;
    }
}

/// Whatever `bytes` hold: check and parse agree, a decoded message is exactly the bytes it consumed
/// (encodings are canonical) and never more than were there, and a refusal is a clear error.
fn random_input_is_decoded_safely(bytes: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    let checked = check(bytes, limits);
    match parse(bytes, limits) {
        Ok((m, n)) => {
            prop_assert_eq!(checked, Ok(n));
            prop_assert!(n as usize <= bytes.len());
            prop_assert_eq!(encode(&m), &bytes[..n as usize]);
        }
        Err(DecodeError::Incomplete) => prop_assert_eq!(checked, Err(DecodeError::Incomplete)),
        Err(DecodeError::Invalid { error, skip }) => {
            prop_assert!(!error.to_string().is_empty());
            if let Some(skip) = skip {
                prop_assert!(skip >= 4, "a refused message is at least a type and a field");
            }
            if let Ok(n) = checked {
                // Only the content of a whole message can be refused after check accepted it.
                prop_assert!(matches!(error, WireError::BadName { .. }), "{error}");
                prop_assert_eq!(skip, Some(n));
            }
        }
    }
    Ok(())
}
