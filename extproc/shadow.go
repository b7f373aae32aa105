package extproc

import (
	"context"

	"google.golang.org/grpc/metadata"

	"github.com/llmcanary/llmcanary/internal/wire"
)

// streamShadow reads the shadow marker a shadow cluster's filter opens its
// streams with (envoyconfig.ShadowFilter): the model and the version that
// answers the mirrored request. ok is false for every other stream. The
// marker comes from Envoy's configuration, never from a request header,
// so a client cannot make its request look mirrored.
func streamShadow(ctx context.Context) (model, version string, ok bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	ms, vs := md.Get(wire.MetadataShadowModel), md.Get(wire.MetadataShadowVersion)
	if len(ms) == 0 || len(vs) == 0 || ms[0] == "" || vs[0] == "" {
		return "", "", false
	}
	return ms[0], vs[0], true
}

// markShadow turns st into the stream of a mirrored request: its row is a
// shadow answer of model's version, with text (each one is half of a
// judged pair).
func (s *Server) markShadow(st *stream, model, version string) {
	st.rec.Shadow = true
	st.shadowModel, st.shadowVersion = model, version
	if !st.capture {
		st.capture = true
		st.captureMax = s.capture.MaxBytes
		st.meter = newResponseMeter(max(RefusalWindow, st.captureMax))
	}
}
