// Package lifecycle is the stop-and-wait part every llmcanary service
// shares (extprocsvc.Service, analyzersvc.Service): Stop asks the service
// to end and waits, Done is closed once it has, Err says why it ended when
// nobody asked it to.
package lifecycle

import "context"

// Lifecycle tracks one running service. Create it with New; the service's
// own goroutine calls Finish once everything is down.
type Lifecycle struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// New returns a context that ends when ctx does or Stop is called, and the
// Lifecycle that Stop belongs to.
func New(ctx context.Context) (context.Context, *Lifecycle) {
	ctx, cancel := context.WithCancel(ctx)
	return ctx, &Lifecycle{cancel: cancel, done: make(chan struct{})}
}

// Finish records why the service ended (nil when it was asked to) and
// closes Done. Call it once, when the service is down.
func (l *Lifecycle) Finish(err error) {
	l.err = err
	l.cancel()
	close(l.done)
}

// Cancel asks the service to end without waiting: the context New
// returned ends.
func (l *Lifecycle) Cancel() { l.cancel() }

// Stop asks the service to end and waits until it has.
func (l *Lifecycle) Stop() {
	l.cancel()
	<-l.done
}

// Done is closed when the service has ended.
func (l *Lifecycle) Done() <-chan struct{} { return l.done }

// Err waits for the end and returns why the service ended when nobody
// asked it to (a server that failed); nil otherwise.
func (l *Lifecycle) Err() error {
	<-l.done
	return l.err
}
