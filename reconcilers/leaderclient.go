package reconcilers

import (
	"context"
	"sync/atomic"

	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sourceraft/sourceraft/storage"
)

// leaderClient refuses every write to the Kubernetes API while its gate is
// closed. The gate closes the moment this replica learns it lost Raft
// leadership, before the manager is told to stop, so a reconcile still in
// flight on a former leader cannot write status for artifacts that a new
// leader may have superseded. Reads pass through.
type leaderClient struct {
	client.Client
	gate *atomic.Bool
}

// gateErr is storage.ErrNotLeader while the gate is closed.
func gateErr(gate *atomic.Bool) error {
	if !gate.Load() {
		return storage.ErrNotLeader
	}
	return nil
}

func (c leaderClient) check() error { return gateErr(c.gate) }

func (c leaderClient) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Client.Create(ctx, obj, opts...)
}

func (c leaderClient) Delete(ctx context.Context, obj client.Object, opts ...client.DeleteOption) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Client.Delete(ctx, obj, opts...)
}

func (c leaderClient) DeleteAllOf(ctx context.Context, obj client.Object, opts ...client.DeleteAllOfOption) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Client.DeleteAllOf(ctx, obj, opts...)
}

func (c leaderClient) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Client.Update(ctx, obj, opts...)
}

func (c leaderClient) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Client.Patch(ctx, obj, patch, opts...)
}

func (c leaderClient) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Client.Apply(ctx, obj, opts...)
}

func (c leaderClient) Status() client.SubResourceWriter {
	return leaderWriter{SubResourceWriter: c.Client.Status(), gate: c.gate}
}

func (c leaderClient) SubResource(name string) client.SubResourceClient {
	sub := c.Client.SubResource(name)
	return struct {
		client.SubResourceReader
		leaderWriter
	}{sub, leaderWriter{SubResourceWriter: sub, gate: c.gate}}
}

// leaderWriter gates a subresource (status) writer like leaderClient.
type leaderWriter struct {
	client.SubResourceWriter
	gate *atomic.Bool
}

func (c leaderWriter) check() error { return gateErr(c.gate) }

func (c leaderWriter) Create(ctx context.Context, obj, sub client.Object, opts ...client.SubResourceCreateOption) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.SubResourceWriter.Create(ctx, obj, sub, opts...)
}

func (c leaderWriter) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.SubResourceWriter.Update(ctx, obj, opts...)
}

func (c leaderWriter) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.SubResourceWriter.Patch(ctx, obj, patch, opts...)
}

func (c leaderWriter) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.SubResourceWriter.Apply(ctx, obj, opts...)
}
