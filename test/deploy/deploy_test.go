// Package deploy validates the kustomize bases under deploy/: it builds them
// in-process with krusty, as `kubectl apply -k` would, and submits every
// object to a real kube-apiserver (envtest) with a server-side dry run and
// strict field validation, so schema errors, unknown fields, bad port names
// and Pod Security "restricted" violations fail the test, not a user's
// cluster. It also checks that the manifests agree with the binary: the
// flags wire the identity package to the headless Service, the mounted
// files are the ones the flags name, and the RBAC grants what the
// reconcilers use and nothing they do not.
package deploy

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/sourceraft/sourceraft/api"
	"github.com/sourceraft/sourceraft/identity"
	"github.com/sourceraft/sourceraft/internal/testenv"
)

const (
	ns       = "flux-system"
	sa       = "source-controller"
	stsName  = "source-controller"
	peersSvc = "source-controller-peers"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	var err error
	if env, err = testenv.StartEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

func repoPath(t *testing.T, elem ...string) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(append([]string{root}, elem...)...)
}

// build runs kustomize on dir exactly as `kubectl apply -k dir` would
// (default options: files only from inside the kustomization root).
func build(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var out []*unstructured.Unstructured
	for _, r := range rm.Resources() {
		// Through JSON, so numbers are int64/float64 as in any decoded object.
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatalf("kustomize build %s: %s: %v", dir, r.CurId(), err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(data); err != nil {
			t.Fatalf("kustomize build %s: %s: %v", dir, r.CurId(), err)
		}
		out = append(out, u)
	}
	return out
}

func key(u *unstructured.Unstructured) string { return u.GetKind() + "/" + u.GetName() }

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string, into any) {
	t.Helper()
	for _, u := range objs {
		if u.GetKind() == kind && u.GetName() == name {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, into, true); err != nil {
				t.Fatalf("%s/%s: %v", kind, name, err)
			}
			return
		}
	}
	t.Fatalf("%s/%s not in the build", kind, name)
}

// The checked-in copy of the CRDs must be what `make crds` generated.
func TestCRDCopyMatchesAPI(t *testing.T) {
	src, dst := repoPath(t, "api", "crds"), repoPath(t, "deploy", "statefulset", "crds")
	want, _ := filepath.Glob(filepath.Join(src, "*.yaml"))
	got, _ := filepath.Glob(filepath.Join(dst, "source.toolkit.fluxcd.io_*.yaml"))
	if len(want) == 0 {
		t.Fatal("no CRDs in api/crds")
	}
	base := func(ps []string) []string {
		var out []string
		for _, p := range ps {
			out = append(out, filepath.Base(p))
		}
		return out
	}
	if !slices.Equal(base(want), base(got)) {
		t.Fatalf("deploy/statefulset/crds holds %v, api/crds %v: run make deploy-crds", base(got), base(want))
	}
	for _, p := range want {
		a, _ := os.ReadFile(p)
		b, err := os.ReadFile(filepath.Join(dst, filepath.Base(p)))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("deploy/statefulset/crds/%s differs from api/crds (%v): run make deploy-crds", filepath.Base(p), err)
		}
	}
}

func TestStatefulSetBase(t *testing.T) {
	objs := build(t, repoPath(t, "deploy", "statefulset"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	crds, err := api.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ServiceAccount/" + sa,
		"ClusterRole/sourceraft-source-controller",
		"ClusterRoleBinding/sourceraft-source-controller",
		"Service/source-controller",
		"Service/" + peersSvc,
		"StatefulSet/" + stsName,
		"PodDisruptionBudget/source-controller",
		"NetworkPolicy/source-controller",
	}
	for _, c := range crds {
		want = append(want, "CustomResourceDefinition/"+c.Name)
	}
	var got []string
	for _, u := range objs {
		got = append(got, key(u))
		namespaced := !slices.Contains([]string{"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}, u.GetKind())
		if namespaced && u.GetNamespace() != ns {
			t.Errorf("%s is in namespace %q, want %s", key(u), u.GetNamespace(), ns)
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("objects built:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	t.Run("apply", func(t *testing.T) { applyAll(ctx, t, objs) })
	t.Run("statefulset", func(t *testing.T) { checkStatefulSet(t, objs) })
	t.Run("pod passes restricted pod security", func(t *testing.T) { dryRunPod(ctx, t, objs) })
	t.Run("services", func(t *testing.T) { checkServices(t, objs) })
	t.Run("pdb and networkpolicy", func(t *testing.T) { checkPDBAndPolicy(t, objs) })
	t.Run("flux labels", func(t *testing.T) { checkFluxLabels(ctx, t, objs) })
	t.Run("rbac", func(t *testing.T) { checkRBAC(ctx, t, objs) })
}

// applyAll creates flux-system (enforcing the restricted Pod Security
// level), applies the CRDs for real, then every other object with a
// server-side dry run and strict field validation.
// ensureNamespace creates the namespace the bases deploy into, enforcing
// the restricted Pod Security level.
func ensureNamespace(ctx context.Context, t *testing.T) {
	t.Helper()
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce":         "restricted",
		"pod-security.kubernetes.io/enforce-version": "latest",
	}}}
	if err := env.Client.Create(ctx, nsObj); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func applyAll(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured) {
	c := env.Client
	ensureNamespace(ctx, t)
	strict := client.WithFieldValidation(c, metav1.FieldValidationStrict)
	// The CRDs first, for real: server-side apply over the ones testenv
	// installed from api/crds, so they must be valid and compatible.
	for _, u := range objs {
		if u.GetKind() != "CustomResourceDefinition" {
			continue
		}
		if err := strict.Apply(ctx, client.ApplyConfigurationFromUnstructured(u.DeepCopy()),
			client.FieldOwner("test-deploy"), client.ForceOwnership); err != nil {
			t.Errorf("apply %s: %v", key(u), err)
		}
	}
	dry := client.NewDryRunClient(strict)
	for _, u := range objs {
		if u.GetKind() == "CustomResourceDefinition" {
			continue
		}
		if err := dry.Create(ctx, u.DeepCopy()); err != nil {
			t.Errorf("dry-run create %s: %v", key(u), err)
		}
	}
}

func container(t *testing.T, sts *appsv1.StatefulSet) corev1.Container {
	t.Helper()
	if n := len(sts.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("%d containers, want 1", n)
	}
	return sts.Spec.Template.Spec.Containers[0]
}

// flagValues maps --name=value arguments; a bare --name maps to "true".
func flagValues(args []string) map[string]string {
	m := map[string]string{}
	for _, a := range args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok {
			value = "true"
		}
		m[name] = value
	}
	return m
}

// expand does what the kubelet does with $(VAR) in args, for pod 0.
func expand(s string) string {
	return strings.NewReplacer("$(POD_NAME)", stsName+"-0", "$(RUNTIME_NAMESPACE)", ns).Replace(s)
}

func checkStatefulSet(t *testing.T, objs []*unstructured.Unstructured) {
	var sts appsv1.StatefulSet
	find(t, objs, "StatefulSet", stsName, &sts)
	spec := sts.Spec
	if spec.Replicas == nil || *spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", spec.Replicas)
	}
	if spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("podManagementPolicy %q, want Parallel", spec.PodManagementPolicy)
	}
	if spec.ServiceName != peersSvc {
		t.Errorf("serviceName %q, want %s", spec.ServiceName, peersSvc)
	}
	if len(spec.VolumeClaimTemplates) != 1 || spec.VolumeClaimTemplates[0].Name != "data" {
		t.Errorf("volumeClaimTemplates %v, want one named data", spec.VolumeClaimTemplates)
	}
	pod := spec.Template.Spec
	if pod.ServiceAccountName != sa {
		t.Errorf("serviceAccountName %q", pod.ServiceAccountName)
	}
	aa := pod.Affinity
	if aa == nil || aa.PodAntiAffinity == nil || len(aa.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 ||
		aa.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.TopologyKey != corev1.LabelHostname {
		t.Errorf("want preferred pod anti-affinity by %s, got %+v", corev1.LabelHostname, aa)
	} else if sel := aa.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.LabelSelector; sel == nil ||
		sel.MatchLabels["app"] != spec.Selector.MatchLabels["app"] {
		t.Errorf("anti-affinity selector %v does not select the StatefulSet's pods %v", sel, spec.Selector)
	}
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault || psc.FSGroup == nil {
		t.Errorf("pod securityContext %+v: want runAsNonRoot, seccomp RuntimeDefault, fsGroup", psc)
	}

	c := container(t, &sts)
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container securityContext %+v", sc)
	}
	if c.Image != "ghcr.io/sourceraft/source-controller:latest" {
		t.Errorf("image %q", c.Image)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("resource requests %v", c.Resources.Requests)
	}

	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	wantPorts := map[string]int32{"raft": 7000, "http": 9090, "api": 9091, "healthz": 9440, "http-prom": 8080}
	for name, port := range wantPorts {
		if ports[name] != port {
			t.Errorf("container port %s = %d, want %d", name, ports[name], port)
		}
	}
	probe := func(what string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || portOf(p.HTTPGet.Port, ports) != 9440 {
			t.Errorf("%s probe %+v, want GET %s on 9440", what, p, path)
		}
	}
	probe("readiness", c.ReadinessProbe, "/readyz")
	probe("liveness", c.LivenessProbe, "/healthz")
	probe("startup", c.StartupProbe, "/healthz")

	// The flags: the listeners on the container ports, the identity wired
	// to the headless Service, the files where the volumes put them.
	flags := flagValues(c.Args)
	for flag, port := range map[string]string{"raft-addr": ":7000", "storage-addr": ":9090", "api-addr": ":9091", "health-addr": ":9440", "metrics-addr": ":8080"} {
		if flags[flag] != port {
			t.Errorf("--%s=%q, want %s", flag, flags[flag], port)
		}
	}
	if flags["reconcile"] != "true" {
		t.Error("--reconcile missing: no replica would reconcile sources")
	}
	if flags["replicas"] != fmt.Sprint(*spec.Replicas) {
		t.Errorf("--replicas=%s differs from spec.replicas %d", flags["replicas"], *spec.Replicas)
	}
	if got := expand(flags["storage-adv-addr"]); got != "source-controller."+ns+".svc.cluster.local." {
		t.Errorf("--storage-adv-addr expands to %q, want the source-controller Service (port 80)", got)
	}
	id, err := identity.Derive(identity.Flags{
		NodeID: expand(flags["node-id"]), Replicas: 3, PeerDNS: expand(flags["peer-dns"]), RaftAddr: flags["raft-addr"],
	})
	if err != nil {
		t.Fatalf("identity from the manifest's flags: %v", err)
	}
	if want := fmt.Sprintf("%s-0.%s.%s.svc.cluster.local.:7000", stsName, peersSvc, ns); id.Advertise != want {
		t.Errorf("pod 0 advertises %q, want %q", id.Advertise, want)
	}
	if len(id.Peers) != 3 || id.Peers[2].ID != stsName+"-2" ||
		id.Peers[2].RaftAddr != fmt.Sprintf("%s-2.%s.%s.svc.cluster.local.:7000", stsName, peersSvc, ns) {
		t.Errorf("peers %+v", id.Peers)
	}
	envs := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			envs[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if envs["POD_NAME"] != "metadata.name" || envs["RUNTIME_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("downward API env %v", envs)
	}

	// Every file a flag names lives on a mount of the right volume.
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	fileOn := func(flag, volume, secret, key string) {
		v, ok := volumes[volume]
		if !ok || v.Secret == nil || v.Secret.SecretName != secret {
			t.Errorf("volume %s: want Secret %s, got %+v", volume, secret, v)
		}
		if want := filepath.Join(mounts[volume], key); flags[flag] != want {
			t.Errorf("--%s=%q, want %s (volume %s mounted at %q)", flag, flags[flag], want, volume, mounts[volume])
		}
	}
	fileOn("raft-tls-cert", "raft-tls", "source-controller-raft-tls", "tls.crt")
	fileOn("raft-tls-key", "raft-tls", "source-controller-raft-tls", "tls.key")
	fileOn("raft-tls-ca", "raft-tls", "source-controller-raft-tls", "ca.crt")
	fileOn("api-token-file", "api-token", "source-controller-api-token", "token")
	if mounts["data"] != flags["storage-path"] {
		t.Errorf("--storage-path=%q, data volume at %q", flags["storage-path"], mounts["data"])
	}
	if mounts["tmp"] != "/tmp" || volumes["tmp"].EmptyDir == nil {
		t.Errorf("want an emptyDir on /tmp under a read-only root filesystem")
	}
	if _, insecure := flags["raft-insecure"]; insecure {
		t.Error("--raft-insecure in the production manifest")
	}
}

func portOf(p intstr.IntOrString, named map[string]int32) int32 {
	if p.Type == intstr.String {
		return named[p.StrVal]
	}
	return p.IntVal
}

// dryRunPod submits pod 0 as the StatefulSet controller would create it:
// Pod Security admission enforces only on Pods, so this is where a
// restricted-level violation of the template would surface. The negative
// control, the same pod made privileged, must be refused by Pod Security
// admission: otherwise the namespace enforces nothing and the check
// proves nothing.
func dryRunPod(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured) {
	pod := podOf(t, objs)
	dry := client.NewDryRunClient(client.WithFieldValidation(env.Client, metav1.FieldValidationStrict))
	if err := dry.Create(ctx, pod.DeepCopy()); err != nil {
		t.Fatalf("dry-run create of pod %s in a namespace enforcing restricted: %v", pod.Name, err)
	}
	bad, yes := pod.DeepCopy(), true
	for i := range bad.Spec.Containers {
		c := &bad.Spec.Containers[i]
		if c.SecurityContext == nil {
			c.SecurityContext = &corev1.SecurityContext{}
		}
		c.SecurityContext.Privileged, c.SecurityContext.AllowPrivilegeEscalation = &yes, &yes
	}
	err := dry.Create(ctx, bad)
	if err == nil {
		t.Fatalf("a privileged pod was admitted into %s: Pod Security admission does not enforce restricted there", ns)
	}
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `violates PodSecurity "restricted:latest"`) {
		t.Fatalf("a privileged pod was refused, but not by Pod Security admission: %v", err)
	}
}

// podOf is pod 0 of the StatefulSet as its controller would create it.
func podOf(t *testing.T, objs []*unstructured.Unstructured) *corev1.Pod {
	var sts appsv1.StatefulSet
	find(t, objs, "StatefulSet", stsName, &sts)
	pod := &corev1.Pod{
		ObjectMeta: *sts.Spec.Template.ObjectMeta.DeepCopy(),
		Spec:       *sts.Spec.Template.Spec.DeepCopy(),
	}
	pod.Name, pod.Namespace = stsName+"-0", ns
	pod.Spec.Hostname, pod.Spec.Subdomain = pod.Name, sts.Spec.ServiceName
	for _, vct := range sts.Spec.VolumeClaimTemplates {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: vct.Name, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: vct.Name + "-" + pod.Name},
		}})
	}
	return pod
}

func checkServices(t *testing.T, objs []*unstructured.Unstructured) {
	var sts appsv1.StatefulSet
	find(t, objs, "StatefulSet", stsName, &sts)
	ports := map[string]int32{}
	for _, p := range container(t, &sts).Ports {
		ports[p.Name] = p.ContainerPort
	}
	selects := func(s *corev1.Service) {
		for k, v := range s.Spec.Selector {
			if sts.Spec.Template.Labels[k] != v {
				t.Errorf("Service %s selector %v does not select the pods %v", s.Name, s.Spec.Selector, sts.Spec.Template.Labels)
			}
		}
		if len(s.Spec.Selector) == 0 {
			t.Errorf("Service %s selects nothing", s.Name)
		}
	}

	var svc corev1.Service
	find(t, objs, "Service", "source-controller", &svc)
	selects(&svc)
	if svc.Spec.ClusterIP == corev1.ClusterIPNone || len(svc.Spec.Ports) != 1 ||
		svc.Spec.Ports[0].Port != 80 || portOf(svc.Spec.Ports[0].TargetPort, ports) != 9090 {
		t.Errorf("Service source-controller %+v: want ClusterIP, port 80 -> 9090", svc.Spec)
	}

	var peers corev1.Service
	find(t, objs, "Service", peersSvc, &peers)
	selects(&peers)
	if peers.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service %s clusterIP %q, want None (headless)", peersSvc, peers.Spec.ClusterIP)
	}
	if !peers.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s must publish not-ready addresses: peers resolve each other before they are Ready", peersSvc)
	}
	var raft bool
	for _, p := range peers.Spec.Ports {
		raft = raft || (p.Port == 7000 && portOf(p.TargetPort, ports) == 7000)
	}
	if !raft {
		t.Errorf("Service %s has no raft port: %+v", peersSvc, peers.Spec.Ports)
	}
}

func checkPDBAndPolicy(t *testing.T, objs []*unstructured.Unstructured) {
	var sts appsv1.StatefulSet
	find(t, objs, "StatefulSet", stsName, &sts)
	podLabels := sts.Spec.Template.Labels
	var pdb policyv1.PodDisruptionBudget
	find(t, objs, "PodDisruptionBudget", "source-controller", &pdb)
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil {
		t.Errorf("PDB %+v, want maxUnavailable 1", pdb.Spec)
	}
	if pdb.Spec.Selector == nil || pdb.Spec.Selector.MatchLabels["app"] != podLabels["app"] {
		t.Errorf("PDB selector %v does not select %v", pdb.Spec.Selector, podLabels)
	}

	var np networkingv1.NetworkPolicy
	find(t, objs, "NetworkPolicy", "source-controller", &np)
	if np.Spec.PodSelector.MatchLabels["app"] != podLabels["app"] {
		t.Errorf("NetworkPolicy applies to %v, not the pods %v", np.Spec.PodSelector, podLabels)
	}
	// Which peers may reach each named port.
	fromPeersOnly := map[string]bool{}
	fromNamespace := map[string]bool{}
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			for _, f := range rule.From {
				if f.NamespaceSelector != nil || f.IPBlock != nil {
					t.Errorf("rule for port %v admits traffic from outside the namespace: %+v", p.Port, f)
				}
				switch {
				case f.PodSelector != nil && len(f.PodSelector.MatchLabels) == 0 && len(f.PodSelector.MatchExpressions) == 0:
					fromNamespace[p.Port.String()] = true
				case f.PodSelector != nil && f.PodSelector.MatchLabels["app"] == podLabels["app"]:
					fromPeersOnly[p.Port.String()] = true
				}
			}
		}
	}
	for _, p := range []string{"raft", "api"} {
		if !fromPeersOnly[p] || fromNamespace[p] {
			t.Errorf("port %s: want only from the source-controller pods (peers %v, namespace %v)", p, fromPeersOnly[p], fromNamespace[p])
		}
	}
	for _, p := range []string{"http", "http-prom"} {
		if !fromNamespace[p] {
			t.Errorf("port %s: want open to the namespace", p)
		}
	}
}

// fluxLabels are what Flux's install puts on every object of its
// source-controller (manifests/bases/source-controller and manifests/install
// in fluxcd/flux2), plus sourceraft's own name.
var fluxLabels = map[string]string{
	"app.kubernetes.io/part-of":   "flux",
	"app.kubernetes.io/component": "source-controller",
	"app.kubernetes.io/instance":  ns,
	"app.kubernetes.io/name":      "sourceraft",
}

// checkFluxLabels checks the labels the Flux CLI and Flux tooling select by:
// on every object and on the pods, with the selectors left alone (a
// StatefulSet's selector and volumeClaimTemplates cannot change on an
// existing StatefulSet), and asks the API server for the CRDs by the label
// `flux check` and `flux uninstall` select them with.
func checkFluxLabels(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured) {
	hasAll := func(what string, got, want map[string]string) {
		t.Helper()
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: label %s=%q, want %q (labels %v)", what, k, got[k], v, got)
			}
		}
	}
	for _, u := range objs {
		hasAll(key(u), u.GetLabels(), fluxLabels)
	}
	var sts appsv1.StatefulSet
	find(t, objs, "StatefulSet", stsName, &sts)
	podWant := map[string]string{"app": "source-controller"}
	maps.Copy(podWant, fluxLabels)
	hasAll("pod template", sts.Spec.Template.Labels, podWant)
	if sel := sts.Spec.Selector; sel == nil || len(sel.MatchExpressions) != 0 ||
		!maps.Equal(sel.MatchLabels, map[string]string{"app": "source-controller"}) {
		t.Errorf("StatefulSet selector %v, want exactly app=source-controller", sel)
	}
	for _, vct := range sts.Spec.VolumeClaimTemplates {
		if len(vct.Labels) != 0 {
			t.Errorf("volumeClaimTemplate %s has labels %v: an existing StatefulSet could not be updated", vct.Name, vct.Labels)
		}
	}
	// As Flux's Deployment and Service of the source-controller.
	for _, k := range []string{"StatefulSet/" + stsName, "Service/source-controller"} {
		for _, u := range objs {
			if key(u) == k {
				hasAll(k, u.GetLabels(), map[string]string{"control-plane": "controller"})
			}
		}
	}

	crds, err := api.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	// Metadata only, as the Flux CLI lists them.
	var list metav1.PartialObjectMetadataList
	list.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinitionList"))
	if err := env.Client.List(ctx, &list, client.MatchingLabels{"app.kubernetes.io/part-of": "flux"}); err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, c := range list.Items {
		listed = append(listed, c.Name)
	}
	for _, c := range crds {
		if !slices.Contains(listed, c.Name) {
			t.Errorf("CRD %s is not listed by app.kubernetes.io/part-of=flux (listed: %v)", c.Name, listed)
		}
	}
}

// checkRBAC applies the ServiceAccount, ClusterRole and binding for real and
// asks the API server, as the controller's ServiceAccount, for what the
// reconcilers do (allowed) and for what they do not (denied).
func checkRBAC(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured) {
	for _, kind := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding"} {
		for _, u := range objs {
			if u.GetKind() == kind {
				if err := env.Client.Create(ctx, u.DeepCopy()); err != nil && !apierrors.IsAlreadyExists(err) {
					t.Fatalf("create %s: %v", key(u), err)
				}
			}
		}
	}
	var crb rbacv1.ClusterRoleBinding
	find(t, objs, "ClusterRoleBinding", "sourceraft-source-controller", &crb)
	if len(crb.Subjects) != 1 || crb.Subjects[0].Namespace != ns || crb.Subjects[0].Name != sa {
		t.Fatalf("binding subjects %+v, want ServiceAccount %s/%s", crb.Subjects, ns, sa)
	}

	user := "system:serviceaccount:" + ns + ":" + sa
	can := func(group, resource, sub, verb, namespace string) bool {
		t.Helper()
		sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{
				Group: group, Resource: resource, Subresource: sub, Verb: verb, Namespace: namespace,
			},
		}}
		if err := env.Client.Create(ctx, sar); err != nil {
			t.Fatal(err)
		}
		return sar.Status.Allowed
	}
	const src = "source.toolkit.fluxcd.io"
	kinds := []string{"gitrepositories", "helmrepositories", "helmcharts", "ocirepositories", "buckets"}
	type access struct{ group, resource, sub, verb, namespace string }
	var allowed, denied []access
	for _, k := range kinds {
		for _, v := range []string{"get", "list", "watch", "patch"} {
			allowed = append(allowed, access{src, k, "", v, ""}) // cluster-wide cache
		}
		allowed = append(allowed, access{src, k, "status", "patch", "apps"})
		denied = append(denied,
			access{src, k, "", "delete", "apps"}, access{src, k, "", "create", "apps"},
			access{src, k, "", "update", "apps"}, access{src, k, "status", "update", "apps"})
	}
	allowed = append(allowed,
		access{"", "secrets", "", "get", "apps"},
		access{"", "serviceaccounts", "", "get", "apps"},
		access{"", "serviceaccounts", "token", "create", "apps"},
		access{"", "events", "", "create", "apps"},
		access{"", "events", "", "patch", "apps"},
	)
	denied = append(denied,
		access{src, "externalartifacts", "", "list", ""}, // no reconciler for it
		access{"", "secrets", "", "list", ""},
		access{"", "secrets", "", "watch", "apps"},
		access{"", "configmaps", "", "get", "apps"},
		access{"", "serviceaccounts", "", "list", ""},
		access{"coordination.k8s.io", "leases", "", "create", ns},
		access{"", "pods", "", "list", ns},
	)
	// The authorizer learns of new bindings from its informers, a moment
	// after they are created: a grant may lag, never a denial.
	missing := allowed
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		missing = slices.DeleteFunc(missing, func(a access) bool { return can(a.group, a.resource, a.sub, a.verb, a.namespace) })
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, a := range missing {
		t.Errorf("%s cannot %s %s/%s %s in %q, which the reconcilers need", user, a.verb, a.resource, a.sub, a.group, a.namespace)
	}
	for _, a := range denied {
		if can(a.group, a.resource, a.sub, a.verb, a.namespace) {
			t.Errorf("%s can %s %s/%s %s in %q, which nothing needs", user, a.verb, a.resource, a.sub, a.group, a.namespace)
		}
	}
}

// The cert-manager overlay: its CRDs are not installed in envtest, so it is
// built and its certificates checked against the base, not applied.
func TestCertManagerOverlay(t *testing.T) {
	objs := build(t, repoPath(t, "deploy", "cert-manager"))
	kinds := map[string]int{}
	for _, u := range objs {
		kinds[u.GetKind()]++
		if u.GetAPIVersion() == "cert-manager.io/v1" && u.GetNamespace() != ns {
			t.Errorf("%s in namespace %q", key(u), u.GetNamespace())
		}
	}
	if kinds["Issuer"] != 2 || kinds["Certificate"] != 2 || kinds["StatefulSet"] != 1 || kinds["CustomResourceDefinition"] == 0 {
		t.Fatalf("overlay kinds %v: want the base plus 2 Issuers and 2 Certificates", kinds)
	}

	var sts appsv1.StatefulSet
	find(t, objs, "StatefulSet", stsName, &sts)
	var tlsSecret string
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.Name == "raft-tls" && v.Secret != nil {
			tlsSecret = v.Secret.SecretName
		}
	}
	var cert *unstructured.Unstructured
	for _, u := range objs {
		if u.GetKind() == "Certificate" {
			if name, _, _ := unstructured.NestedString(u.Object, "spec", "secretName"); name == tlsSecret {
				cert = u
			}
		}
	}
	if cert == nil {
		t.Fatalf("no Certificate writes the Secret %q the StatefulSet mounts", tlsSecret)
	}
	dnsNames, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	usages, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "usages")
	if !slices.Contains(usages, "server auth") || !slices.Contains(usages, "client auth") {
		t.Errorf("Certificate usages %v: mutual TLS needs server auth and client auth", usages)
	}
	// Every peer host the StatefulSet's flags derive must match a SAN.
	flags := flagValues(container(t, &sts).Args)
	peers, err := identity.StatefulSetPeers(stsName+"-0", int(*sts.Spec.Replicas), expand(flags["peer-dns"]))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		host := strings.TrimSuffix(strings.Split(p.RaftAddr, ":")[0], ".")
		_, parent, _ := strings.Cut(host, ".")
		if !slices.Contains(dnsNames, "*."+parent) && !slices.Contains(dnsNames, host) {
			t.Errorf("peer %s is not covered by the certificate's dnsNames %v", host, dnsNames)
		}
	}
	issuer, _, _ := unstructured.NestedString(cert.Object, "spec", "issuerRef", "name")
	var ca bool
	for _, u := range objs {
		if u.GetKind() == "Issuer" && u.GetName() == issuer {
			_, ca, _ = unstructured.NestedMap(u.Object, "spec", "ca")
		}
	}
	if !ca {
		t.Errorf("Certificate %s is not issued by a CA Issuer of the overlay (issuerRef %q)", cert.GetName(), issuer)
	}
}

// The S3 overlay: the base's objects with the backend's flags and the
// credentials Secret mounted where the flags point, dry-run created like
// the base.
func TestS3Overlay(t *testing.T) {
	objs := build(t, repoPath(t, "deploy", "s3"))
	base := build(t, repoPath(t, "deploy", "statefulset"))
	var got, want []string
	for _, u := range objs {
		got = append(got, key(u))
	}
	for _, u := range base {
		want = append(want, key(u))
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("overlay objects:\n%s\nwant the base's:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	var sts, baseSts appsv1.StatefulSet
	find(t, objs, "StatefulSet", stsName, &sts)
	find(t, base, "StatefulSet", stsName, &baseSts)
	c := container(t, &sts)
	flags := flagValues(c.Args)
	if flags["storage-backend"] != "s3" {
		t.Errorf("--storage-backend=%q, want s3", flags["storage-backend"])
	}
	for _, name := range []string{"s3-endpoint", "s3-bucket", "s3-region", "s3-credentials-file", "s3-cache-size"} {
		if flags[name] == "" {
			t.Errorf("--%s is not set", name)
		}
	}
	for name, v := range flagValues(container(t, &baseSts).Args) {
		if flags[name] != v {
			t.Errorf("base flag --%s=%s became %q", name, v, flags[name])
		}
	}
	var secretVolume string
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "source-controller-s3" {
			secretVolume = v.Name
		}
	}
	if secretVolume == "" {
		t.Fatal("no volume of the Secret source-controller-s3")
	}
	var mounted bool
	for _, m := range c.VolumeMounts {
		if m.Name == secretVolume && m.ReadOnly && strings.HasPrefix(flags["s3-credentials-file"], strings.TrimSuffix(m.MountPath, "/")+"/") {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("--s3-credentials-file=%s is not inside a read-only mount of the Secret", flags["s3-credentials-file"])
	}
	if len(c.VolumeMounts) != len(container(t, &baseSts).VolumeMounts)+1 {
		t.Errorf("%d volume mounts, want the base's and the Secret's", len(c.VolumeMounts))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Only the StatefulSet differs from the base, whose test creates the
	// rest (some for real).
	ensureNamespace(ctx, t)
	t.Run("dry-run statefulset", func(t *testing.T) {
		dry := client.NewDryRunClient(client.WithFieldValidation(env.Client, metav1.FieldValidationStrict))
		for _, u := range objs {
			if u.GetKind() == "StatefulSet" {
				if err := dry.Create(ctx, u.DeepCopy()); err != nil {
					t.Fatalf("dry-run create %s: %v", key(u), err)
				}
			}
		}
	})
	t.Run("pod passes restricted pod security", func(t *testing.T) { dryRunPod(ctx, t, objs) })
}
