package jsonscan

// ScanMembers is Members in a single pass: it validates data as one JSON
// object while it calls fn for each member, in document order, as soon as
// the member's value has been validated. Invalid data yields ErrSyntax,
// possibly after fn was called for the members before the fault, so a
// caller keeps nothing it learnt from a scan that failed. On a value taken
// from a document already validated it cannot fail, and reads each byte
// once where Members reads it twice.
func ScanMembers(data []byte, fn func(key []byte, v Value)) error {
	return scanComposite(data, '{', fn)
}

// ScanElements is Elements in a single pass, as ScanMembers is Members.
func ScanElements(data []byte, fn func(v Value)) error {
	return scanComposite(data, '[', func(_ []byte, v Value) { fn(v) })
}

// scanComposite validates data as one object (open '{') or array ('[')
// with optional whitespace around it, calling fn for each member (key and
// value) or element (nil key) once its value is validated.
func scanComposite(data []byte, open byte, fn func(key []byte, v Value)) error {
	closer := byte(']')
	if open == '{' {
		closer = '}'
	}
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != open {
		return ErrSyntax
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == closer {
		return atEnd(data, i+1)
	}
	for {
		var key []byte
		if open == '{' {
			if i >= len(data) || data[i] != '"' {
				return ErrSyntax
			}
			kEnd, err := skipString(data, i)
			if err != nil {
				return err
			}
			if key = data[i+1 : kEnd-1]; !plain(key) {
				s, _ := Unquote(data[i:kEnd])
				key = []byte(s)
			}
			i = skipSpace(data, kEnd)
			if i >= len(data) || data[i] != ':' {
				return ErrSyntax
			}
			i = skipSpace(data, i+1)
		}
		end, err := skipValue(data, i, 1)
		if err != nil {
			return err
		}
		fn(key, Value{Kind: kindAt(data[i]), Raw: data[i:end]})
		i = skipSpace(data, end)
		switch {
		case i >= len(data):
			return ErrSyntax
		case data[i] == closer:
			return atEnd(data, i+1)
		case data[i] != ',':
			return ErrSyntax
		}
		i = skipSpace(data, i+1)
	}
}

// atEnd reports whether only whitespace follows data[i:].
func atEnd(data []byte, i int) error {
	if skipSpace(data, i) != len(data) {
		return ErrSyntax
	}
	return nil
}
