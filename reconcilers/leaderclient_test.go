package reconcilers

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/sourceraft/sourceraft/api"
	"github.com/sourceraft/sourceraft/storage"
)

func TestLeaderClientGate(t *testing.T) {
	obj := &sourcev1.GitRepository{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "repo"}}
	var gate atomic.Bool
	c := leaderClient{Client: fake.NewClientBuilder().WithScheme(api.Scheme()).WithObjects(obj).WithStatusSubresource(obj).Build(), gate: &gate}
	ctx := context.Background()

	if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		t.Fatalf("read refused while not leader: %v", err)
	}
	writes := map[string]func() error{
		"update":       func() error { return c.Update(ctx, obj) },
		"patch":        func() error { return c.Patch(ctx, obj, client.MergeFrom(obj.DeepCopy())) },
		"delete":       func() error { return c.Delete(ctx, obj) },
		"status patch": func() error { return c.Status().Patch(ctx, obj, client.MergeFrom(obj.DeepCopy())) },
		"status update": func() error {
			return c.Status().Update(ctx, obj)
		},
		"subresource update": func() error { return c.SubResource("status").Update(ctx, obj) },
	}
	for name, w := range writes {
		if err := w(); !errors.Is(err, storage.ErrNotLeader) {
			t.Errorf("%s while not leader: %v, want storage.ErrNotLeader", name, err)
		}
	}
	gate.Store(true)
	if err := c.Status().Update(ctx, obj); err != nil {
		t.Errorf("status update while leader: %v", err)
	}
}
