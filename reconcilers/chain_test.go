package reconcilers

import (
	"context"
	"errors"
	"testing"

	"github.com/fluxcd/pkg/runtime/patch"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
)

func TestLowestRequeue(t *testing.T) {
	tests := []struct{ a, b, want Result }{
		{ResultEmpty, ResultEmpty, ResultEmpty},
		{ResultEmpty, ResultSuccess, ResultSuccess},
		{ResultSuccess, ResultEmpty, ResultSuccess},
		{ResultSuccess, ResultRequeue, ResultRequeue},
		{ResultRequeue, ResultEmpty, ResultRequeue},
	}
	for _, tt := range tests {
		if got := lowestRequeue(tt.a, tt.b); got != tt.want {
			t.Errorf("lowestRequeue(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestRunSteps(t *testing.T) {
	type state struct{ ran []string }
	mk := func(name string, r Result, err error) step[*sourcev1.GitRepository, state] {
		return func(_ context.Context, _ *patch.SerialPatcher, _ *sourcev1.GitRepository, s *state) (Result, error) {
			s.ran = append(s.ran, name)
			return r, err
		}
	}
	boom := errors.New("boom")
	tests := []struct {
		name    string
		steps   []step[*sourcev1.GitRepository, state]
		want    Result
		wantErr error
		ran     string
	}{
		{"all succeed", []step[*sourcev1.GitRepository, state]{mk("a", ResultSuccess, nil), mk("b", ResultSuccess, nil)}, ResultSuccess, nil, "ab"},
		{"lowest requeue is kept", []step[*sourcev1.GitRepository, state]{mk("a", ResultEmpty, nil), mk("b", ResultSuccess, nil), mk("c", ResultEmpty, nil)}, ResultSuccess, nil, "abc"},
		{"error stops the chain", []step[*sourcev1.GitRepository, state]{mk("a", ResultSuccess, nil), mk("b", ResultEmpty, boom), mk("c", ResultSuccess, nil)}, ResultEmpty, boom, "ab"},
		{"requeue stops the chain", []step[*sourcev1.GitRepository, state]{mk("a", ResultRequeue, nil), mk("b", ResultSuccess, nil)}, ResultRequeue, nil, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &state{}
			got, err := runSteps(context.Background(), nil, &sourcev1.GitRepository{}, s, tt.steps)
			ran := ""
			for _, r := range s.ran {
				ran += r
			}
			if got != tt.want || !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) || ran != tt.ran {
				t.Fatalf("got %d, %v after %q; want %d, %v after %q", got, err, ran, tt.want, tt.wantErr, tt.ran)
			}
		})
	}
}
