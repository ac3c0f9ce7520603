"""Names shared by everything that reads or writes managed objects.

Kept in one tiny module so that the renderer, the planner, the API layer, the CLI and the
manifests cannot disagree on a label key.
"""

GROUP = "defaultpolicy.dev"
VERSION = "v1alpha1"
KIND = "DefaultPolicyProfile"
PLURAL = "defaultpolicyprofiles"

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "default-policy-operator"
PROFILE_LABEL = f"{GROUP}/profile"
POLICY_LABEL = f"{GROUP}/policy"
EXEMPT_LABEL = f"{GROUP}/exempt"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
CALICO_NAME_LABEL = "projectcalico.org/name"

#: The label selector the operator watches managed objects with: it never sees other policies.
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"

FINALIZER = f"{GROUP}/cleanup"

#: The last spec that validated, recorded on the profile by the operator: after a restart or a
#: leader handover an invalid profile still has a last good version (fail static).
LAST_VALID_SPEC_ANNOTATION = f"{GROUP}/last-valid-spec"

#: Namespaces a baseline must never lock out, whatever a profile selects.
DEFAULT_PROTECTED_NAMESPACES = frozenset(
    {
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "calico-system",
        "calico-apiserver",
        "tigera-operator",
    }
)
