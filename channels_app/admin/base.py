"""Shared admin pieces."""

from __future__ import annotations


class ReadOnlyMixin:
    """Logs and records: shown, never added, edited or deleted by hand (by no role, superusers
    included: a send log or an erasure record with rows missing tells a wrong story)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class InUseDeleteMixin:
    """For shared configuration that workflow steps name (templates, channels): while a version
    in use (live, canary, in review, approved) names it, it is not deleted; the confirmation page
    (and "Delete selected") lists those versions and says what to do instead."""

    in_use_as = ""  # what steps call it: "template", "channel"
    delete_confirmation_template = "channels_app/delete_in_use.html"

    def in_use(self, obj) -> list[str]:
        from journeys.services.references import config_users

        return config_users(what=self.in_use_as, name=obj.name)

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        blocked = [f"{obj.name} is used by {user}: stop using it there first (a new version), then delete it"
                   for obj in objs for user in self.in_use(obj)]
        return deleted, counts, perms_needed, [*protected, *blocked]

    def delete_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, object_id)
        users = self.in_use(obj) if obj is not None else []
        return super().delete_view(request, object_id, {**(extra_context or {}), "in_use": users})
