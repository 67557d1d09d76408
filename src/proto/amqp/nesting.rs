//! A guard in front of `amq-protocol`'s field-table parser, which recurses once per nested table
//! or array. Six bytes make a level (empty key, type `F`, length), so a 128 KiB frame can nest
//! some 20,000 levels: enough to overflow a 2 MiB tokio worker stack (a debug build dies at about
//! 400 levels, a release build at a few thousand), and a stack overflow aborts the whole process,
//! every session with it. Before a payload with a table goes to `amq-protocol`, this walks its
//! tables without recursing past [`MAX_TABLE_NESTING`] and refuses anything deeper.
//!
//! The walk only measures depth. A table that is malformed in any other way is left for
//! `amq-protocol` to refuse, so that the error is the one a full decode gives.

use super::MethodError;
use super::id;
use super::wire::Reader;

/// How deep field tables and arrays may nest in a method's arguments or a message's headers; the
/// table itself is level 1. Real traffic stays far below: RabbitMQ's `x-death` header, a table
/// in an array in the headers table with arrays inside, is 4.
pub const MAX_TABLE_NESTING: usize = 32;

/// The arguments in front of a method's field table.
#[derive(Clone, Copy)]
enum Before {
    Octet,
    Short,
    ShortString,
    Bits,
}

/// Where a method's table is, for the methods that have one (each has at most one).
fn table_position(method: (u16, u16)) -> Option<&'static [Before]> {
    use Before::*;
    Some(match method {
        id::CONNECTION_START => &[Octet, Octet],
        id::CONNECTION_START_OK => &[],
        id::EXCHANGE_DECLARE => &[Short, ShortString, ShortString, Bits],
        id::EXCHANGE_BIND | id::EXCHANGE_UNBIND | id::QUEUE_BIND => {
            &[Short, ShortString, ShortString, ShortString, Bits]
        }
        id::QUEUE_DECLARE => &[Short, ShortString, Bits],
        id::QUEUE_UNBIND => &[Short, ShortString, ShortString, ShortString],
        id::BASIC_CONSUME => &[Short, ShortString, ShortString, Bits],
        _ => return None,
    })
}

/// Checks the field table of a method payload (starting at its class id), if it has one.
pub(crate) fn check_method(method: (u16, u16), payload: &[u8]) -> Result<(), MethodError> {
    let Some(before) = table_position(method) else {
        return Ok(());
    };
    let mut reader = Reader::new(payload);
    let reached = reader.id().and_then(|_| {
        before.iter().try_for_each(|argument| match argument {
            Before::Octet | Before::Bits => reader.u8().map(drop),
            Before::Short => reader.u16().map(drop),
            Before::ShortString => reader.skip_short_str(),
        })
    });
    match reached {
        Ok(()) => check_table(&mut reader),
        // Cut short before the table: nothing deep to fear, and amq-protocol will say why.
        Err(_) => Ok(()),
    }
}

/// Checks the table at the reader's position (a message's headers property, say).
pub(crate) fn check_table(reader: &mut Reader<'_>) -> Result<(), MethodError> {
    match table(reader, 1) {
        Err(Stop::TooDeep) => Err(MethodError::Malformed(format!(
            "field tables nested deeper than {MAX_TABLE_NESTING} levels"
        ))),
        Ok(()) | Err(Stop::Unreadable) => Ok(()),
    }
}

enum Stop {
    TooDeep,
    /// Not a well-formed table; whoever parses it next reports how.
    Unreadable,
}

impl From<MethodError> for Stop {
    fn from(_: MethodError) -> Stop {
        Stop::Unreadable
    }
}

/// A table (length, then key and typed value pairs) at nesting level `depth`.
fn table(reader: &mut Reader<'_>, depth: usize) -> Result<(), Stop> {
    if depth > MAX_TABLE_NESTING {
        return Err(Stop::TooDeep);
    }
    let length = reader.u32()?;
    let mut entries = Reader::new(reader.take(length as usize)?);
    while entries.position() < length as usize {
        entries.skip_short_str()?;
        value(&mut entries, depth)?;
    }
    Ok(())
}

/// An array (length, then typed values) at nesting level `depth`.
fn array(reader: &mut Reader<'_>, depth: usize) -> Result<(), Stop> {
    if depth > MAX_TABLE_NESTING {
        return Err(Stop::TooDeep);
    }
    let length = reader.u32()?;
    let mut values = Reader::new(reader.take(length as usize)?);
    while values.position() < length as usize {
        value(&mut values, depth)?;
    }
    Ok(())
}

/// One type octet and its value, in a table or array at level `depth`. The type letters are
/// those `amq-protocol` (and RabbitMQ) read.
fn value(reader: &mut Reader<'_>, depth: usize) -> Result<(), Stop> {
    let fixed = match reader.u8()? {
        b'F' => return table(reader, depth + 1),
        b'A' => return array(reader, depth + 1),
        b'S' | b'x' => return Ok(reader.skip_long()?),
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'L' | b'l' | b'd' | b'T' => 8,
        _ => return Err(Stop::Unreadable),
    };
    reader.take(fixed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `levels` tables, each the only value of the one around it; level 1 is the outermost.
    fn nested_tables(levels: usize) -> Vec<u8> {
        let mut table = 0u32.to_be_bytes().to_vec();
        for _ in 1..levels {
            let mut outer = ((table.len() + 2) as u32).to_be_bytes().to_vec();
            outer.extend_from_slice(&[0, b'F']);
            outer.extend_from_slice(&table);
            table = outer;
        }
        table
    }

    fn check(table: &[u8]) -> Result<(), MethodError> {
        check_table(&mut Reader::new(table))
    }

    #[test]
    fn allows_nesting_up_to_the_limit() {
        assert_eq!(check(&nested_tables(1)), Ok(()));
        assert_eq!(check(&nested_tables(MAX_TABLE_NESTING)), Ok(()));
        assert!(matches!(
            check(&nested_tables(MAX_TABLE_NESTING + 1)),
            Err(MethodError::Malformed(_))
        ));
        assert!(check(&nested_tables(20_000)).is_err());
    }

    #[test]
    fn arrays_count_as_levels() {
        // {"a": [[]]}: table, array, array.
        let table = [0, 0, 0, 12, 1, b'a', b'A', 0, 0, 0, 5, b'A', 0, 0, 0, 0];
        assert_eq!(check(&table), Ok(()));
        let mut reader = Reader::new(&table);
        assert!(matches!(
            table_depth_limit(&mut reader, 2),
            Err(Stop::TooDeep)
        ));
    }

    /// The walk with a lower limit, to test it on small inputs.
    fn table_depth_limit(reader: &mut Reader<'_>, limit: usize) -> Result<(), Stop> {
        table(reader, MAX_TABLE_NESTING + 1 - limit)
    }

    #[test]
    fn leaves_other_faults_to_the_parser() {
        for bad in [
            &b"\x00\x00\x00\x05\x01a?xx"[..],
            b"\x00\x00\x00\x09",
            b"\x00\x00\x00\x03\x01aS",
            b"\x00\x00",
        ] {
            assert_eq!(check(bad), Ok(()), "{bad:?}");
        }
    }

    #[test]
    fn finds_the_table_of_each_method() {
        let deep = nested_tables(MAX_TABLE_NESTING + 1);
        let cases: [((u16, u16), &[u8]); 8] = [
            (id::CONNECTION_START, b"\x00\x09"),
            (id::CONNECTION_START_OK, b""),
            (id::EXCHANGE_DECLARE, b"\x00\x00\x01e\x06direct\x00"),
            (id::EXCHANGE_BIND, b"\x00\x00\x01d\x01s\x01k\x00"),
            (id::QUEUE_DECLARE, b"\x00\x00\x01q\x00"),
            (id::QUEUE_BIND, b"\x00\x00\x01q\x01e\x01k\x00"),
            (id::QUEUE_UNBIND, b"\x00\x00\x01q\x01e\x01k"),
            (id::BASIC_CONSUME, b"\x00\x00\x01q\x01c\x00"),
        ];
        for (method, before) in cases {
            let mut payload = [method.0.to_be_bytes(), method.1.to_be_bytes()].concat();
            payload.extend_from_slice(before);
            let shallow = [&payload[..], &nested_tables(3)].concat();
            assert_eq!(check_method(method, &shallow), Ok(()), "{method:?}");
            payload.extend_from_slice(&deep);
            assert!(check_method(method, &payload).is_err(), "{method:?}");
        }
        assert_eq!(check_method(id::BASIC_PUBLISH, &deep), Ok(()));
    }
}
