"""Admin building blocks shared by the journeys admin modules."""

from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records that are facts (events, audit entries, reports): viewable, never edited here."""

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
