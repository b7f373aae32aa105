package abi

// The state of one VM: the VM context set by the module's init, the plugin
// contexts by id, and the HTTP contexts by id. A proxy-wasm VM runs one
// callback at a time, so none of it is locked.
var (
	vmContext      VMContext = DefaultVMContext{}
	pluginContexts           = map[uint32]PluginContext{}
	httpContexts             = map[uint32]HttpContext{}
)

// SetVMContext installs the module's VM context. Call it from an init
// function of the main package: the host calls no export before the Go
// runtime and package initialisation (_initialize) have run.
func SetVMContext(ctx VMContext) { vmContext = ctx }

// Every export below is a plain function of the context state so that the
// dispatch is tested natively; exports_wasip1.go only forwards to them.

func onVMStart(_ uint32, vmConfigurationSize uint32) bool {
	return vmContext.OnVMStart(int(vmConfigurationSize))
}

func onContextCreate(contextID, parentID uint32) {
	if parentID == 0 {
		pluginContexts[contextID] = vmContext.NewPluginContext(contextID)
		return
	}
	root, ok := pluginContexts[parentID]
	if !ok {
		LogCritical("proxy_on_context_create: unknown plugin context")
		return
	}
	httpContexts[contextID] = root.NewHttpContext(contextID)
}

func onConfigure(rootID, pluginConfigurationSize uint32) bool {
	root, ok := pluginContexts[rootID]
	if !ok {
		return false
	}
	return root.OnPluginStart(int(pluginConfigurationSize))
}

func httpContext(id uint32) HttpContext {
	if c, ok := httpContexts[id]; ok {
		return c
	}
	return nil
}

func onRequestHeaders(id, numHeaders uint32, eos bool) Action {
	c := httpContext(id)
	if c == nil {
		return ActionContinue
	}
	return c.OnHttpRequestHeaders(int(numHeaders), eos)
}

func onRequestBody(id, bodySize uint32, eos bool) Action {
	c := httpContext(id)
	if c == nil {
		return ActionContinue
	}
	return c.OnHttpRequestBody(int(bodySize), eos)
}

func onRequestTrailers(id, numTrailers uint32) Action {
	c := httpContext(id)
	if c == nil {
		return ActionContinue
	}
	return c.OnHttpRequestTrailers(int(numTrailers))
}

// onDelete forgets a context, telling an HttpStreamDeleter; it is the one
// callback at a stream's end.
func onDelete(id uint32) {
	if c, ok := httpContexts[id]; ok {
		delete(httpContexts, id)
		if d, ok := c.(HttpStreamDeleter); ok {
			d.OnHttpStreamDelete()
		}
		return
	}
	delete(pluginContexts, id)
}
