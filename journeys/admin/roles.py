"""Who holds which role, granted and revoked through `user_roles_set`; and Django's own user
and group pages closed to everyone but superusers.

Why: with `auth.change_group` an ops user could add `change_user` to its own group and then
tick `is_superuser` (issue #15). Ops now manage people only here (roles) and on a business
unit's editors page; permissions, `is_superuser`, `is_staff` and passwords of other accounts
are edited by superusers only, whatever permissions a group has been given by mistake."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import Prefetch

from journeys.admin.base import reason_field
from journeys.models import RoleMember
from journeys.services.governance import ROLE_EDITORS, ROLES, business_units_granted, roles_can_manage
from journeys.services.roles import user_roles, user_roles_set


class RolesForm(forms.ModelForm):
    """Only the roles and a reason: no field of the account itself can be posted through it."""

    roles = forms.MultipleChoiceField(choices=[(r, r) for r in ROLES], required=False,
                                      widget=forms.CheckboxSelectMultiple,
                                      help_text="Business-unit editors also need a unit: grant it on the unit's "
                                                "editors page. Taking the role away takes their units away too.")
    change_reason = reason_field()

    class Meta:
        model = RoleMember
        fields: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial.setdefault("roles", user_roles(user=self.instance))


@admin.register(RoleMember)
class RoleMemberAdmin(admin.ModelAdmin):
    form = RolesForm
    list_display = ("username", "full_name", "email", "roles", "is_active", "is_superuser", "last_login")
    list_filter = ("groups", "is_active")
    search_fields = ("username", "first_name", "last_name", "email")
    ordering = ("username",)
    readonly_fields = ("username", "full_name", "email", "is_active", "is_superuser", "is_staff", "last_login",
                       "units_edited")
    fields = ("username", "full_name", "email", "is_active", "is_superuser", "is_staff", "last_login", "roles",
              "units_edited", "change_reason")

    @admin.display(description="name")
    def full_name(self, obj):
        return obj.get_full_name()

    @admin.display(description="roles")
    def roles(self, obj):
        """The roles, and the units an editor edits (from the groups prefetched for the page)."""
        held = user_roles(user=obj)
        units = sorted(unit.name for unit in map(_unit_of, obj.groups.all()) if unit is not None)
        shown = [f"{role} ({', '.join(units) or 'no unit'})" if role == ROLE_EDITORS else role for role in held]
        if units and ROLE_EDITORS not in held:
            shown.append(f"unit grants without the editors role, which edit nothing: {', '.join(units)}")
        return ", ".join(shown) or "-"

    @admin.display(description="edits the workflows of")
    def units_edited(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        units = business_units_granted(user=obj)
        return ", ".join(f"{u.name} ({u.slug})" for u in units) or "no business unit"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related(
            Prefetch("groups", queryset=Group.objects.select_related("editing_unit")))

    def has_module_permission(self, request):
        return roles_can_manage(user=request.user)

    def has_view_permission(self, request, obj=None):
        return roles_can_manage(user=request.user)

    def has_change_permission(self, request, obj=None):
        if not roles_can_manage(user=request.user):
            return False
        return obj is None or not obj.is_superuser or request.user.is_superuser

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        done = user_roles_set(user=obj, roles=form.cleaned_data["roles"], actor=request.user,
                              reason=form.cleaned_data["change_reason"])
        if done.units_revoked:
            self.message_user(request, f"{obj} no longer edits the workflows of "
                                       f"{', '.join(u.name for u in done.units_revoked)}.", messages.WARNING)

    def save_related(self, request, form, formsets, change):
        """Nothing else of the account is saved from this page."""


def _unit_of(group: Group):
    try:
        return group.editing_unit
    except Group.editing_unit.RelatedObjectDoesNotExist:
        return None


class SuperuserOnly:
    """Django's user/group admin for superusers; others may at most look (with the view permission)."""

    def has_add_permission(self, request, *args):
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser


class GuardedUserAdmin(SuperuserOnly, UserAdmin):
    pass


class GuardedGroupAdmin(SuperuserOnly, GroupAdmin):
    pass


# django.contrib.auth registered its own admins first (it comes first in INSTALLED_APPS): replace them.
for model, model_admin in ((User, GuardedUserAdmin), (Group, GuardedGroupAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)
