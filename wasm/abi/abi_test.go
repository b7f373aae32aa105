package abi

import (
	"errors"
	"reflect"
	"testing"
)

func TestMapSerialization(t *testing.T) {
	// The spec's example: {"a": "1"}, {"b": "22"}.
	spec := []byte{2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 'a', 0, '1', 0, 'b', 0, '2', '2', 0}
	pairs := [][2]string{{"a", "1"}, {"b", "22"}}
	if got := SerializeMap(pairs); !reflect.DeepEqual(got, spec) {
		t.Fatalf("SerializeMap = %v, want %v", got, spec)
	}
	cases := []struct {
		name string
		in   []byte
		want [][2]string
		err  error
	}{
		{"spec example", spec, pairs, nil},
		{"empty", nil, nil, nil},
		{"single NUL is empty", []byte{0}, nil, nil},
		{"empty values", SerializeMap([][2]string{{":path", ""}}), [][2]string{{":path", ""}}, nil},
		{"count larger than data", []byte{9, 0, 0, 0, 1, 0, 0, 0}, nil, ErrMalformedMap},
		{"lengths overrun", []byte{1, 0, 0, 0, 5, 0, 0, 0, 5, 0, 0, 0, 'a', 0}, nil, ErrMalformedMap},
		{"short header", []byte{1, 0}, nil, ErrMalformedMap},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := DeserializeMap(c.in)
			if !errors.Is(err, c.err) || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("DeserializeMap = %v, %v; want %v, %v", got, err, c.want, c.err)
			}
		})
	}
}

func TestDeserializedMapSharesTheBuffer(t *testing.T) {
	b := SerializeMap([][2]string{{"x-user-id", "alice"}})
	pairs, err := DeserializeMap(b)
	if err != nil || pairs[0] != [2]string{"x-user-id", "alice"} {
		t.Fatalf("DeserializeMap = %v, %v", pairs, err)
	}
	if n := testing.AllocsPerRun(100, func() { DeserializeMap(b) }); n > 1 {
		t.Errorf("%v allocations per map of one pair, want 1 (the pair slice)", n)
	}
}

func TestAllocationsStayUntilTaken(t *testing.T) {
	a := allocate(4)
	b := allocate(0)
	if pendingAllocations() != 2 {
		t.Fatalf("%d pending, want 2", pendingAllocations())
	}
	for _, blk := range allocations {
		if addrOf(blk) == a {
			copy(blk, "abcd") // what the host writes
		}
	}
	if got := string(takeAllocation(a, 3)); got != "abc" {
		t.Errorf("took %q, want abc", got)
	}
	if got := takeAllocation(a, 3); got != nil {
		t.Errorf("second take returned %q, want nil", got)
	}
	takeAllocation(b, 0)
	if pendingAllocations() != 0 {
		t.Errorf("%d pending after taking all", pendingAllocations())
	}
}

func TestLentBlockIsReusedWhenLargeEnoughAndReplacedWhenNot(t *testing.T) {
	buf := make([]byte, 0, 8)
	var a, b, c uint32
	lend(&buf, func() { a = allocate(8) })
	if a != addrOf(buf[:1]) {
		t.Error("a lent block large enough was not used")
	}
	takeAllocation(a, 8)
	lend(&buf, func() { b = allocate(9) })
	if cap(buf) != 9 || b != addrOf(buf[:1]) {
		t.Errorf("a new block for 9 bytes was not left in the lent buffer (cap %d)", cap(buf))
	}
	takeAllocation(b, 9)
	c = allocate(4) // nothing lent: a block of its own
	if c == addrOf(buf[:1]) {
		t.Error("an allocation outside lend used the lent buffer")
	}
	takeAllocation(c, 4)
	if pendingAllocations() != 0 || lent != nil {
		t.Errorf("%d pending allocations, lent %v; want none", pendingAllocations(), lent)
	}
	if n := testing.AllocsPerRun(100, func() {
		lend(&buf, func() { takeAllocation(allocate(9), 9) })
	}); n != 0 {
		t.Errorf("%v allocations per lent host call, want 0", n)
	}
}

func TestDeserializeMapIntoReusesThePairs(t *testing.T) {
	b := SerializeMap([][2]string{{":path", "/v1/chat/completions"}, {"x-user-id", "alice"}})
	dst := make([][2]string, 0, 4)
	got, err := DeserializeMapInto(dst, b)
	if err != nil || len(got) != 2 || got[1] != [2]string{"x-user-id", "alice"} || &got[0] != &dst[:1][0] {
		t.Fatalf("DeserializeMapInto = %v, %v; want both pairs in dst's memory", got, err)
	}
	if n := testing.AllocsPerRun(100, func() { DeserializeMapInto(dst, b) }); n != 0 {
		t.Errorf("%v allocations with room in dst, want 0", n)
	}
	got, err = DeserializeMapInto(dst[:0:1], b)
	if err != nil || len(got) != 2 {
		t.Errorf("DeserializeMapInto with a short dst = %v, %v", got, err)
	}
}

type recVM struct {
	DefaultVMContext
	log *[]string
}

func (v recVM) NewPluginContext(id uint32) PluginContext { return recPlugin{log: v.log} }

type recPlugin struct {
	DefaultPluginContext
	log *[]string
}

func (p recPlugin) OnPluginStart(n int) bool { *p.log = append(*p.log, "configure"); return n > 0 }

func (p recPlugin) NewHttpContext(uint32) HttpContext { return recHTTP{log: p.log} }

type recHTTP struct {
	DefaultHttpContext
	log *[]string
}

func (h recHTTP) OnHttpStreamDelete() { *h.log = append(*h.log, "delete") }

func (h recHTTP) OnHttpRequestHeaders(int, bool) Action {
	*h.log = append(*h.log, "headers")
	return ActionPause
}

func (h recHTTP) OnHttpRequestBody(int, bool) Action {
	*h.log = append(*h.log, "body")
	return ActionContinue
}

func TestDispatchRoutesCallbacksToContexts(t *testing.T) {
	var log []string
	SetVMContext(recVM{log: &log})
	defer SetVMContext(DefaultVMContext{})
	onContextCreate(1, 0)
	if !onConfigure(1, 10) || onConfigure(1, 0) {
		t.Error("configure result not passed through")
	}
	if onConfigure(99, 10) {
		t.Error("configure of an unknown plugin succeeded")
	}
	onContextCreate(2, 1)
	if got := onRequestHeaders(2, 3, false); got != ActionPause {
		t.Errorf("request headers: %v, want pause", got)
	}
	if got := onRequestHeaders(3, 3, false); got != ActionContinue {
		t.Errorf("unknown stream: %v, want continue", got)
	}
	if got := onRequestBody(2, 10, true); got != ActionContinue {
		t.Errorf("request body: %v, want continue", got)
	}
	onDelete(2)
	if got := onRequestBody(2, 10, true); got != ActionContinue {
		t.Errorf("deleted stream: %v, want continue", got)
	}
	onDelete(1)
	if len(httpContexts) != 0 || len(pluginContexts) != 0 {
		t.Errorf("contexts left after delete: %d http, %d plugin", len(httpContexts), len(pluginContexts))
	}
	want := []string{"configure", "configure", "headers", "body", "delete"}
	if !reflect.DeepEqual(log, want) {
		t.Errorf("callbacks %v, want %v", log, want)
	}
}

func TestHostCallsReportUnimplementedNatively(t *testing.T) {
	if _, err := GetHttpRequestHeader(":path"); !errors.Is(err, ErrUnimplemented) {
		t.Errorf("err = %v, want ErrUnimplemented", err)
	}
	if pendingAllocations() != 0 {
		t.Error("a failed host call leaked an allocation")
	}
}
